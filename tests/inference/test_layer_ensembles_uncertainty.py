"""Layer Ensembles uncertainty maps and per-case AULA (Kushibar et al., MICCAI 2022, Sec. 2.2; docs/architecture.md
§3, §5) on hand-built head probabilities."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from monai.data import MetaTensor

from semiseg.inference.layer_ensembles import LayerEnsembleUncertaintyd, SaveLayerAgreementd, uncertainty_maps


def _heads(*probs: tuple[float, float]) -> torch.Tensor:
    """``(1, K, 2, 1)``: K heads' two-class probabilities at one voxel."""
    return torch.tensor(probs).view(1, len(probs), 2, 1)


def test_maps_hand_computed_for_two_disagreeing_heads() -> None:
    # heads (1, 0) and (0, 1): mean (1/2, 1/2) -> entropy log 2 / log 2 = 1; each head's entropy 0 -> MI = 1;
    # variance of the heads' labels {0, 1} (pianoza/LayerEnsembles@e5a4a88 evaluation_utils.py line 98): 1/4
    maps = uncertainty_maps(_heads((1.0, 0.0), (0.0, 1.0)))
    torch.testing.assert_close(maps["mean"].flatten(), torch.tensor([0.5, 0.5]))
    assert maps["entropy"].item() == pytest.approx(1.0, abs=1e-5)
    assert maps["mutual_information"].item() == pytest.approx(1.0, abs=1e-5)
    assert maps["variance"].item() == pytest.approx(0.25)


def test_variance_is_that_of_the_heads_labels() -> None:
    # the reference's segmentation path: np.var(np.argmax(pred, axis=1), axis=0), population variance.
    # three heads, three classes, two voxels: labels (0, 2, 2) -> mean 4/3, var ((16 + 4 + 4) / 9) / 3 = 8/9;
    # labels (1, 1, 0) -> mean 2/3, var ((1 + 1 + 4) / 9) / 3 = 2/9. Soft probabilities count by their argmax only:
    # (0.5, 0.3, 0.2) and (0.9, 0.05, 0.05) are both label 0.
    heads = torch.tensor([
        [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]],
        [[0.1, 0.2, 0.7], [0.2, 0.6, 0.2]],
        [[0.0, 0.4, 0.6], [0.9, 0.05, 0.05]],
    ]).permute(0, 2, 1).unsqueeze(0)  # (1, K=3, C=3, 2 voxels)
    variance = uncertainty_maps(heads)["variance"]
    assert variance.shape == (1, 1, 2)
    torch.testing.assert_close(variance.flatten(), torch.tensor([8 / 9, 2 / 9]))


def test_maps_hand_computed_for_agreeing_and_partly_agreeing_heads() -> None:
    # identical heads (3/4, 1/4): MI 0, variance 0, entropy H(3/4) = -(3/4 log 3/4 + 1/4 log 1/4) / log 2 = 0.8113
    same = uncertainty_maps(_heads((0.75, 0.25), (0.75, 0.25)))
    h = -(0.75 * math.log(0.75 + 1e-6) + 0.25 * math.log(0.25 + 1e-6)) / math.log(2)
    assert same["entropy"].item() == pytest.approx(h, rel=1e-5)
    assert same["mutual_information"].item() == pytest.approx(0.0, abs=1e-6)
    assert same["variance"].item() == 0.0
    # heads (1/2, 1/2) and (1, 0): mean (3/4, 1/4), entropy 0.8113; expected entropy (1 + 0) / 2 = 1/2
    # MI = 0.8113 - 0.5 = 0.3113; both heads' label is 0 (argmax takes the first of a tie): variance 0
    mixed = uncertainty_maps(_heads((0.5, 0.5), (1.0, 0.0)))
    assert mixed["entropy"].item() == pytest.approx(h, rel=1e-5)
    assert mixed["mutual_information"].item() == pytest.approx(h - 0.5, abs=1e-5)
    assert mixed["variance"].item() == 0.0


def test_dict_transform_puts_the_mean_under_pred_and_adds_maps_and_aula(tmp_path: Path) -> None:
    # three heads on four voxels, two classes, foreground masks 1100, 1000, 1000:
    # agreements 2*1/(2+1) = 2/3 and 1 -> AULA (2/3 + 1) / 2 = 5/6
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.float32)
    probs = torch.stack([torch.stack([1 - m, m]) for m in masks]).reshape(6, 4, 1, 1)  # (K * C, *spatial)
    pred = MetaTensor(probs, meta={"filename_or_obj": "/data/imagesTs/case_007.nii.gz"})
    out = LayerEnsembleUncertaintyd(keys="pred", num_classes=2)({"pred": pred, "image": pred})
    torch.testing.assert_close(out["pred"][1].flatten(), torch.tensor([1.0, 1 / 3, 0.0, 0.0]))
    assert out["aula"].item() == pytest.approx(5 / 6)
    torch.testing.assert_close(out["layer_agreement"], torch.tensor([2 / 3, 1.0]))
    for key in ("entropy", "variance", "mutual_information"):
        assert out[key].shape == (1, 4, 1, 1) and isinstance(out[key], MetaTensor)
    torch.testing.assert_close(out["aula_per_class"], torch.tensor([5 / 6]))  # one foreground class: the same
    SaveLayerAgreementd(keys="aula", output_dir=tmp_path, meta_key="image")(out)
    record = json.loads((tmp_path / "case_007_aula.json").read_text())
    assert record["aula"] == pytest.approx(5 / 6) and record["heads"] == 3
    assert record["aula_per_class"] == pytest.approx([5 / 6])
    assert record["layer_agreement"] == pytest.approx([2 / 3, 1.0]) and "mean_entropy" in record


def test_deepest_segmentation_keeps_the_maps_and_aula_of_all_heads() -> None:
    """``segmentation="deepest"``: the network's own output (the last head) under ``pred``; AULA and the maps are
    those of the three heads, as in the ensemble case above (AULA 5/6)."""
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=torch.float32)
    probs = torch.stack([torch.stack([1 - m, m]) for m in masks]).reshape(6, 4, 1, 1)
    ensemble = LayerEnsembleUncertaintyd(keys="pred", num_classes=2)({"pred": probs})
    deepest = LayerEnsembleUncertaintyd(keys="pred", num_classes=2, segmentation="deepest")({"pred": probs})
    torch.testing.assert_close(deepest["pred"][1].flatten(), torch.tensor([0.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(ensemble["pred"][1].flatten(), torch.tensor([2 / 3, 1 / 3, 1 / 3, 0.0]))
    # agreements: 1100 vs 1000 -> 2/3; 1000 vs 0010 -> 0 (disjoint); AULA (2/3 + 0) / 2 = 1/3, both modes
    for out in (ensemble, deepest):
        assert out["aula"].item() == pytest.approx(1 / 3)
    for key in ("entropy", "variance", "mutual_information"):
        torch.testing.assert_close(deepest[key], ensemble[key])


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="not a multiple of num_classes=3"):
        LayerEnsembleUncertaintyd(keys="pred", num_classes=3)({"pred": torch.zeros(4, 2, 2, 2)})
    with pytest.raises(ValueError, match=r"segmentation must be one of \('ensemble', 'deepest'\), got 'last'"):
        LayerEnsembleUncertaintyd(keys="pred", num_classes=2, segmentation="last")
    with pytest.raises(ValueError, match="one prediction key"):
        LayerEnsembleUncertaintyd(keys=["a", "b"], num_classes=2)
    with pytest.raises(ValueError, match=r"C >= 2 classes"):
        uncertainty_maps(torch.zeros(1, 2, 1, 4))


def test_aula_per_class_of_a_three_class_case() -> None:
    # two heads, labels 1120 and 1220 on four voxels: class 1 {0, 1} vs {0} -> 2/3; class 2 {2} vs {1, 2} -> 2/3
    # third head 1100: class 1 {0} vs {0, 1} -> 2/3; class 2 {1, 2} vs {} -> 0
    # per class AULA (two intervals): class 1 (2/3 + 2/3) / 2 = 2/3; class 2 (2/3 + 0) / 2 = 1/3
    labels = torch.tensor([[1, 1, 2, 0], [1, 2, 2, 0], [1, 1, 0, 0]])
    probs = torch.nn.functional.one_hot(labels, 3).permute(0, 2, 1).float().reshape(9, 4, 1, 1)
    out = LayerEnsembleUncertaintyd(keys="pred", num_classes=3)({"pred": probs})
    torch.testing.assert_close(out["aula_per_class"], torch.tensor([2 / 3, 1 / 3]))
