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
from monai.bundle import ckpt_export, run

from semiseg.reporting_qc import QC_FILES, spearman, write_qc_report
from tests.bundles.conftest import REPO, bundle_overrides, config
from tests.bundles.test_package import _infer_without_semiseg, package_bundles

BUNDLE = "layer_ensembles"


def test_train_evaluate_qc_infer_export_and_ship(tiny_demo: Path, tmp_path: Path) -> None:
    common = bundle_overrides(tiny_demo, tmp_path)
    run("training", config_file=config(BUNDLE, "train.json"), max_iterations=2, iterations_per_epoch=2, **common)
    models = tmp_path / "models"
    weights = torch.load(models / "model.pt", weights_only=True)
    assert any(k.startswith("heads.5.") for k in weights) and not any(k.startswith("heads.6.") for k in weights)

    run(config_file=[config(BUNDLE, "train.json"), config(BUNDLE, "evaluate.json")], **common)
    out = tmp_path / "eval"
    assert all((out / name).is_file() for name in QC_FILES)
    with open(out / "qc_report.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2"] and {r["case"] for r in rows} == {"test_000", "test_001"}
    assert float(rows[0]["aula"]) <= float(rows[1]["aula"])  # lowest AULA first: reviewed first
    for row in rows:
        assert 0.0 <= float(row["aula"]) <= 1.0 and 0.0 <= float(row["mean_entropy"]) <= 1.0
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
    assert record["heads"] == 7 and len(record["layer_agreement"]) == 6 and 0.0 <= record["aula"] <= 1.0
    assert record["image"].endswith("test_000.nii.gz")

    # segmentation "deepest": the network's own output (what skip_first 6 keeps alone), QC from all 7 heads
    for name, extra in (("deepest", {"segmentation": "deepest"}), ("skip6", {"skip_first": 6})):
        run(config_file=config(BUNDLE, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(models),
            output_dir=str(tmp_path / name), roi_size=[32, 32, 32], **extra)
    deepest_seg, skip6_seg = (nib.load(tmp_path / n / "test_000_seg.nii.gz").get_fdata() for n in ("deepest", "skip6"))
    np.testing.assert_array_equal(deepest_seg, skip6_seg)
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
