"""layer_agreement / AULA (Kushibar et al., "Layer Ensembles", MICCAI 2022), checked against hand computations."""

from __future__ import annotations

import pytest
import torch

from semiseg.metrics import aula, aula_per_class, layer_agreement


def _one_hot(labels: list[list[int]], num_classes: int) -> torch.Tensor:
    """``(B, C, N)`` one-hot probabilities from per-item label lists."""
    return torch.nn.functional.one_hot(torch.tensor(labels), num_classes).permute(0, 2, 1).float()


def test_hand_computed_binary_three_heads_per_batch_item() -> None:
    # item 0: masks 1100, 1000, 1000 -> Dice 2*1/(2+1) = 2/3, then 1 -> AULA (2/3 + 1) / 2 / 1 = 5/6
    # item 1: every head empty -> agreement 1, 1 -> AULA 1
    heads = [
        _one_hot([[1, 1, 0, 0], [0, 0, 0, 0]], 2),
        _one_hot([[1, 0, 0, 0], [0, 0, 0, 0]], 2),
        _one_hot([[1, 0, 0, 0], [0, 0, 0, 0]], 2),
    ]
    torch.testing.assert_close(layer_agreement(heads), torch.tensor([[2 / 3, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(aula(heads), torch.tensor([5 / 6, 1.0]))


def test_trapezoid_over_three_intervals_and_disjoint_masks() -> None:
    # masks 1100, 1100, 0011, 0011 -> curve (1, 0, 1): trapezoids (1+0)/2 + (0+1)/2 = 1 over 2 intervals -> 0.5
    heads = [_one_hot([m], 2) for m in ([1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1])]
    torch.testing.assert_close(layer_agreement(heads), torch.tensor([[1.0, 0.0, 1.0]]))
    torch.testing.assert_close(aula(heads), torch.tensor([0.5]))


def test_one_empty_mask_against_a_non_empty_one_is_zero() -> None:
    heads = [_one_hot([[0, 0, 0, 0]], 2), _one_hot([[0, 1, 0, 0]], 2), _one_hot([[0, 1, 0, 0]], 2)]
    torch.testing.assert_close(layer_agreement(heads), torch.tensor([[0.0, 1.0]]))
    torch.testing.assert_close(aula(heads), torch.tensor([0.5]))


def test_multiclass_mean_over_present_foreground_classes() -> None:
    # labels 1120 vs 1220: class 1 {0,1} vs {0} -> 2/3; class 2 {2} vs {1,2} -> 2/3; mean 2/3
    heads = [_one_hot([[1, 1, 2, 0]], 3), _one_hot([[1, 2, 2, 0]], 3)]
    torch.testing.assert_close(layer_agreement(heads), torch.tensor([[2 / 3]]))
    # class 2 absent from both masks is left out (not counted as 1): 1100 vs 1000 with 3 classes -> 2/3
    heads = [_one_hot([[1, 1, 0, 0]], 3), _one_hot([[1, 0, 0, 0]], 3)]
    torch.testing.assert_close(layer_agreement(heads), torch.tensor([[2 / 3]]))


def test_two_heads_give_the_single_agreement() -> None:
    heads = [_one_hot([[1, 1, 0, 0]], 2), _one_hot([[1, 0, 0, 0]], 2)]
    torch.testing.assert_close(aula(heads), torch.tensor([2 / 3]))


def test_argmax_of_soft_probabilities_and_single_channel_threshold() -> None:
    soft = torch.tensor([[[0.9, 0.4, 0.6, 0.2], [0.1, 0.6, 0.4, 0.8]]])  # argmax 0101
    sharp = _one_hot([[0, 1, 1, 1]], 2)  # 0111 -> Dice 2*2/(2+3) = 0.8
    torch.testing.assert_close(layer_agreement([soft, sharp]), torch.tensor([[0.8]]))
    sigmoid_a = torch.tensor([[[0.9, 0.6, 0.4, 0.1]]])  # p > 0.5: 1100
    sigmoid_b = torch.tensor([[[0.9, 0.2, 0.2, 0.2]]])  # 1000
    torch.testing.assert_close(layer_agreement([sigmoid_a, sigmoid_b]), torch.tensor([[2 / 3]]))


def test_volumes_are_flattened_and_identical_heads_give_one() -> None:
    probs = torch.softmax(torch.randn(2, 3, 8, 8, 8), dim=1)
    assert aula([probs] * 5).tolist() == [1.0, 1.0]
    noisy = [torch.softmax(torch.randn(2, 3, 8, 8, 8), dim=1) for _ in range(4)]
    value = aula(noisy)
    assert value.shape == (2,) and bool(((value >= 0) & (value <= 1)).all())


def test_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="at least 2 heads, got 1"):
        aula([torch.zeros(1, 2, 4)])
    with pytest.raises(ValueError, match=r"head 1 has \(1, 2, 5\)"):
        layer_agreement([torch.zeros(1, 2, 4), torch.zeros(1, 2, 5)])
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\), got shape \(2, 4\)"):
        layer_agreement([torch.zeros(2, 4), torch.zeros(2, 4)])


def test_area_under_agreement_hand_computed_and_errors() -> None:
    from semiseg.metrics import area_under_agreement

    # curve (1, 0.5, 0): trapezoids (1 + 0.5)/2 + (0.5 + 0)/2 = 1 over 2 intervals -> 0.5; one point -> itself
    torch.testing.assert_close(area_under_agreement(torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])),
                               torch.tensor([0.5, 1.0]))
    torch.testing.assert_close(area_under_agreement(torch.tensor([[0.25]])), torch.tensor([0.25]))
    with pytest.raises(ValueError, match=r"\(B, n >= 1\), got shape \(3,\)"):
        area_under_agreement(torch.ones(3))


def test_per_class_curves_and_aula_hand_computed() -> None:
    # heads 1120, 1220, 1100 (four voxels, three classes):
    # class 1: {0, 1} vs {0} -> 2/3, {0} vs {0, 1} -> 2/3; class 2: {2} vs {1, 2} -> 2/3, {1, 2} vs {} -> 0
    heads = [_one_hot([m], 3) for m in ([1, 1, 2, 0], [1, 2, 2, 0], [1, 1, 0, 0])]
    torch.testing.assert_close(layer_agreement(heads, per_class=True), torch.tensor([[[2 / 3, 2 / 3], [2 / 3, 0.0]]]))
    torch.testing.assert_close(aula_per_class(heads), torch.tensor([[2 / 3, 1 / 3]]))
    # a class absent from both masks agrees (1) in its own curve, and is left out of the case curve's class mean
    heads = [_one_hot([[1, 1, 0, 0]], 3), _one_hot([[1, 0, 0, 0]], 3)]
    torch.testing.assert_close(aula_per_class(heads), torch.tensor([[2 / 3, 1.0]]))
    torch.testing.assert_close(aula(heads), torch.tensor([2 / 3]))


def test_agreement_is_on_binarised_masks_not_on_probabilities() -> None:
    # The authors' README and paper: the Dice between the layers' segmentations. Their code casts softmax
    # probabilities to bool (pianoza/LayerEnsembles@e5a4a88 metrics.py as_logical), so any non-zero probability is
    # foreground: run on these heads in a scratch folder it gives agreement 1 for every pair. Here: argmax masks
    # 0101 and 0111 -> Dice 2 * 2 / (2 + 3) = 0.8, although no probability is 0.
    soft_a = torch.tensor([[[0.9, 0.4, 0.6, 0.2], [0.1, 0.6, 0.4, 0.8]]])
    soft_b = torch.tensor([[[0.7, 0.3, 0.4, 0.1], [0.3, 0.7, 0.6, 0.9]]])
    torch.testing.assert_close(aula_per_class([soft_a, soft_b]), torch.tensor([[0.8]]))
