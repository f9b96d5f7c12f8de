"""The layer_ensembles bundle end to end: training, the QC report of `evaluate`, inference's uncertainty maps and
per-case AULA (also from the released zip with MONAI alone), TorchScript export, and the Mean Teacher variant."""

from __future__ import annotations

import csv
import json
import math
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, run

from semiseg.losses import PresentClassDiceLoss
from semiseg.reporting_qc import QC_FILES, spearman, write_qc_report
from tests.bundles.conftest import REPO, bundle_overrides, config
from tests.bundles.test_package import _infer_without_semiseg, package_bundles

BUNDLE = "layer_ensembles"


def test_train_evaluate_qc_infer_export_and_ship(tiny_demo: Path, tmp_path: Path) -> None:
    common = bundle_overrides(tiny_demo, tmp_path)
    run("training", config_file=config(BUNDLE, "train.json"), max_iterations=2, iterations_per_epoch=2, **common)
    models = tmp_path / "models"
    weights = torch.load(models / "model.pt", weights_only=True)
    assert any(k.startswith("heads.7.") for k in weights) and not any(k.startswith("heads.8.") for k in weights)

    run(config_file=[config(BUNDLE, "train.json"), config(BUNDLE, "evaluate.json")], **common)
    out = tmp_path / "eval"
    assert all((out / name).is_file() for name in QC_FILES)
    with open(out / "qc_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["case"] for r in rows} == {"test_000", "test_001"}
    assert float(rows[0]["aula"]) <= float(rows[1]["aula"])  # lowest AULA first: reviewed first
    for row in rows:
        assert 0.0 <= float(row["aula"]) <= 1.0 and 0.0 <= float(row["mean_entropy"]) <= 1.0
        assert 0.0 <= float(row["aula_organ"]) <= 1.0 and 0.0 <= float(row["aula_lesion"]) <= 1.0
        assert {"dice_organ", "dice_lesion"} <= set(row)
        assert row["hd95_mm"] != "" and (row["dice"] == "" or 0.0 <= float(row["dice"]) <= 1.0)
    case = json.loads((out / "test_000_metrics.json").read_text())
    dice = case["dice"]["mean"]
    assert dice is None or float(next(r for r in rows if r["case"] == "test_000")["dice"]) == pytest.approx(dice, 1e-3)
    assert "Spearman" in (out / "qc_review.md").read_text()

    infer = tmp_path / "infer"
    run(config_file=config(BUNDLE, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(models),
        output_dir=str(infer), roi_size=[32, 32, 32])
    image = nib.load(tiny_demo / "imagesTs" / "test_000.nii.gz")
    for name in ("seg", "entropy", "variance", "mutual_information"):
        volume = nib.load(infer / f"test_000_{name}.nii.gz")
        assert volume.shape == image.shape and np.allclose(volume.affine, image.affine), name
        data = volume.get_fdata()
        assert data.min() >= 0.0 and data.max() <= (2 if name == "seg" else 1.0 + 1e-5), name
    record = json.loads((infer / "test_000_aula.json").read_text())
    # 9 members, the first 3 skipped (the reference's SKIP_FIRST_T = 3): 6 kept, 5 adjacent pairs
    assert record["heads"] == 6 and len(record["layer_agreement"]) == 5 and 0.0 <= record["aula"] <= 1.0
    assert len(record["aula_per_class"]) == 2
    assert record["image"].endswith("test_000.nii.gz")

    # segmentation "deepest": the network's own output (what skip_first 8 keeps alone), QC from the 6 kept members
    for name, extra in (("deepest", {"segmentation": "deepest"}), ("skip8", {"skip_first": 8})):
        run(config_file=config(BUNDLE, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(models),
            output_dir=str(tmp_path / name), roi_size=[32, 32, 32], **extra)
    deepest_seg, skip8_seg = (nib.load(tmp_path / n / "test_000_seg.nii.gz").get_fdata() for n in ("deepest", "skip8"))
    np.testing.assert_array_equal(deepest_seg, skip8_seg)
    assert json.loads((tmp_path / "deepest" / "test_000_aula.json").read_text())["aula"] == pytest.approx(
        record["aula"], abs=1e-6)

    exported = tmp_path / "model.ts"
    ckpt_export(net_id="network_def", filepath=str(exported), ckpt_file=str(models / "model.pt"),
                meta_file=config(BUNDLE, "metadata.json"), config_file=config(BUNDLE, "inference.json"),
                use_trace=True, input_shape=[1, 1, 32, 32, 32])
    scripted = torch.jit.load(str(exported))
    assert scripted(torch.rand(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)

    # the released zip ships the wrapper, the uncertainty transforms and what they import, and runs with MONAI alone
    zip_path = package_bundles.package_bundle(REPO / "bundles" / BUNDLE, tmp_path / "dist", models / "model.pt")
    shipped = package_bundles.shipped_modules(zip_path)
    assert {"semiseg.networks.layer_ensembles", "semiseg.inference.layer_ensembles",
            "semiseg.metrics.layer_agreement", "semiseg.losses.entropy"} <= set(shipped)
    hub = tmp_path / "hub"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(hub)
    _infer_without_semiseg(hub / BUNDLE, tiny_demo, tmp_path)
    assert (hub / BUNDLE / "eval" / "test_000_mutual_information.nii.gz").is_file()
    assert (hub / BUNDLE / "eval" / "test_000_aula.json").is_file()


def test_mean_teacher_with_layer_ensemble_heads_trains(tiny_demo: Path, tmp_path: Path) -> None:
    """Beyond the paper: configs/mean_teacher_heads.json turns the bundle into Mean Teacher with heads."""
    common = bundle_overrides(tiny_demo, tmp_path)
    run("training", config_file=[config(BUNDLE, "train.json"), config(BUNDLE, "mean_teacher_heads.json")],
        max_iterations=2, iterations_per_epoch=2, **common)
    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert {"model", "teacher", "rampup"} <= set(checkpoint) and checkpoint["trainer"]["iteration"] == 2
    teacher = torch.load(tmp_path / "models" / "teacher.pt", weights_only=True)
    assert any(k.startswith("heads.0.") for k in teacher)
    run(config_file=[config(BUNDLE, "train.json"), config(BUNDLE, "evaluate.json")],
        model_file=str(tmp_path / "models" / "teacher.pt"), **common)
    assert (tmp_path / "eval" / "qc_report.csv").is_file()


def test_qc_report_hand_built(tmp_path: Path) -> None:
    # AULA (0.9, 0.5, 0.7) and Dice (0.8, 0.3, 0.6) have the same ranks (3, 1, 2): Spearman rho = 1;
    # Dice (0.3, 0.8, 0.6): ranks (1, 3, 2) against (3, 1, 2): d = (2, -2, 0), rho = 1 - 6 * 8 / (3 * 8) = -1
    rows = [
        {"case": c, "image": f"/d/{c}.nii.gz", "aula": a, "dice": d, "hd95": h, "mean_entropy": 0.1}
        for c, a, d, h in (("a", 0.9, 0.8, 1.0), ("b", 0.5, 0.3, 5.0), ("c", 0.7, 0.6, math.nan))
    ]
    result = write_qc_report(rows, tmp_path)
    assert result["spearman"] == pytest.approx(1.0) and result["cases"] == 3
    with open(tmp_path / "qc_report.csv") as f:
        ranked = list(csv.DictReader(f))
    assert [r["case"] for r in ranked] == ["b", "c", "a"] and ranked[1]["hd95_mm"] == ""
    assert "1.000" in (tmp_path / "qc_review.md").read_text() and (tmp_path / "qc_aula_vs_dice.png").stat().st_size
    assert spearman([0.9, 0.5, 0.7], [0.3, 0.8, 0.6]) == pytest.approx(-1.0)
    assert math.isnan(spearman([0.9, 0.5], [0.3, 0.8])) and math.isnan(spearman([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="at least one evaluated case"):
        write_qc_report([], tmp_path)
    with pytest.raises(ValueError, match=r"lacks \['hd95'\]"):
        write_qc_report([{"case": "x", "image": "", "aula": 1.0, "dice": 1.0, "mean_entropy": 0.0}], tmp_path)


def test_qc_correlates_each_class_aula_with_the_same_class_dice(tmp_path: Path) -> None:
    # the reference correlates aula_<c> with dsc_<c> (pianoza/LayerEnsembles@e5a4a88 summarize_results/
    # make_summary.py 125-137). Organ AULA (0.9, 0.5, 0.7) and organ Dice (0.9, 0.6, 0.8): same ranks, rho 1;
    # lesion AULA (0.2, 0.8, 0.5) and lesion Dice (0.1, 0.7, 0.3): rho 1. The case AULA (0.55, 0.65, 0.6) against
    # mean Dice values (0.65, 0.5, 0.55): ranks (1, 3, 2) and (3, 1, 2), rho -1
    def row(case: str, aula: list[float], dice: list[float], mean_dice: float) -> dict:
        return {"case": case, "image": f"/d/{case}.nii.gz", "aula": sum(aula) / 2, "dice": mean_dice, "hd95": 1.0,
                "mean_entropy": 0.1, "aula_per_class": aula, "dice_per_class": dice}

    rows = [row("a", [0.9, 0.2], [0.9, 0.1], 0.65), row("b", [0.5, 0.8], [0.6, 0.7], 0.5),
            row("c", [0.7, 0.5], [0.8, 0.3], 0.55)]
    result = write_qc_report(rows, tmp_path, class_names=["organ", "lesion"])
    assert result["spearman_per_class"] == {"organ": pytest.approx(1.0), "lesion": pytest.approx(1.0)}
    assert result["spearman"] == pytest.approx(-1.0)  # the class mean hides what each class shows
    with open(tmp_path / "qc_report.csv") as f:
        ranked = list(csv.DictReader(f))
    assert list(ranked[0])[-4:] == ["aula_organ", "dice_organ", "aula_lesion", "dice_lesion"]
    assert [r["case"] for r in ranked] == ["a", "c", "b"] and ranked[0]["dice_lesion"] == "0.1000"
    review = (tmp_path / "qc_review.md").read_text()
    assert "- organ: 1.000" in review and "- lesion: 1.000" in review and "mean Dice: -1.000" in review
    with pytest.raises(ValueError, match="one AULA and one Dice per foreground class"):
        write_qc_report([rows[0], {**rows[1], "dice_per_class": [0.5]}], tmp_path)


def test_bundle_defaults_are_the_references_heads_loss_and_skipping() -> None:
    parser = ConfigParser()
    parser.read_config(config(BUNDLE, "train.json"))
    network = parser.get_parsed_content("network_def")
    # heads on the encoder side only (pianoza/LayerEnsembles@e5a4a88 commons.py 29-36), the first third of the members
    # skipped at test time (configs.py line 8, SKIP_FIRST_T = 3 of 10)
    assert len(network.layers) == 8 and not any(".2" in name.replace("unit", "") for name in network.layers)
    assert network.num_outputs == 9 and network.skip_first == 3 == network.num_outputs // 3
    # every head trained with the Dice alone (commons.py 77-86)
    loss = parser.get_parsed_content("method").supervised_loss
    assert isinstance(loss.loss, PresentClassDiceLoss) and loss.weight_mode == "same"
    # la.json: heads on the VNet's encoder stages and downsamplings (9 heads, 10 members as the reference)
    parser.read_config([config(BUNDLE, "train.json"), config(BUNDLE, "la.json")])
    assert parser["network_def"]["layers"] == [
        "encoder.0", "downs.0", "encoder.1", "downs.1", "encoder.2", "downs.2", "encoder.3", "downs.3", "encoder.4"]
