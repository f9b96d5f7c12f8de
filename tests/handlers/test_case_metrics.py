"""CaseMetricsWriter and the mm distance / miss handlers on an engine that mimics the evaluator's decollated output
(docs/architecture.md §5)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.handlers import MetricsSaver, from_engine

from semiseg.handlers import CaseMetricsWriter, HausdorffDistanceMM, MissedStructures, SurfaceDistanceMM
from semiseg.handlers.case_metrics import case_names

SPACING = (1.5, 1.5, 3.0)
DIAGONAL = math.sqrt((8 * 1.5) ** 2 + (8 * 1.5) ** 2 + (8 * 3.0) ** 2)
UNITS = {"hd95": "mm", "asd": "mm", "misses": "count"}


def _one_hot(cubes: dict[int, tuple[int, int, int]], name: str) -> MetaTensor:
    labels = torch.zeros(8, 8, 8, dtype=torch.long)
    for k, (x, y, z) in cubes.items():
        labels[x : x + 2, y : y + 2, z : z + 2] = k
    one_hot = torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    return MetaTensor(one_hot, affine=affine, meta={"filename_or_obj": name})


def _case(name: str, label: dict, pred: dict) -> dict:
    image = MetaTensor(torch.zeros(1, 8, 8, 8), meta={"filename_or_obj": f"/data/{name}.nii.gz"})
    return {"image": image, "label": _one_hot(label, name), "pred": _one_hot(pred, name)}


def _evaluate(tmp_path: Path) -> Engine:
    """Two iterations of one case each, as a SupervisedEvaluator with batch_size 1 and decollate=True leaves them."""
    cases = [
        [_case("case_a", {1: (2, 2, 2), 2: (5, 5, 5)}, {1: (2, 2, 3), 2: (5, 5, 5)})],  # organ 1 voxel off in z
        [_case("case_b", {1: (2, 2, 2), 2: (5, 5, 5)}, {1: (2, 2, 2)})],  # lesion missed
    ]
    engine = Engine(lambda e, batch: batch)
    transform = from_engine(["pred", "label"])
    HausdorffDistanceMM(percentile=95, output_transform=transform).attach(engine, "hd95")
    SurfaceDistanceMM(symmetric=True, output_transform=transform).attach(engine, "asd")
    MissedStructures(output_transform=transform).attach(engine, "misses")
    CaseMetricsWriter(tmp_path, class_names=["organ", "lesion"], units=UNITS).attach(engine)
    MetricsSaver(save_dir=str(tmp_path), metrics="*", metric_details="*",
                 batch_transform=lambda batch: [item["image"].meta for item in batch]).attach(engine)
    engine.run(cases)
    return engine


def test_per_case_json_in_mm_with_misses(tmp_path: Path) -> None:
    engine = _evaluate(tmp_path)
    a = json.loads((tmp_path / "case_a_metrics.json").read_text())
    b = json.loads((tmp_path / "case_b_metrics.json").read_text())
    assert a["image"] == "/data/case_a.nii.gz"
    assert a["units"] == UNITS
    assert a["spacing_mm"] == list(SPACING) and a["miss_penalty_mm"] == pytest.approx(DIAGONAL)
    assert a["hd95"] == pytest.approx({"organ": 3.0, "lesion": 0.0, "mean": 1.5})
    assert a["asd"] == pytest.approx({"organ": 1.5, "lesion": 0.0, "mean": 0.75})
    assert a["misses"] == {"organ": 0, "lesion": 0, "total": 0}
    assert b["hd95"] == pytest.approx({"organ": 0.0, "lesion": DIAGONAL, "mean": DIAGONAL / 2})
    assert b["misses"] == {"organ": 0, "lesion": 1, "total": 1}
    # the run's means keep the missed lesion at the penalty; the miss count is the total
    assert engine.state.metrics["hd95"] == pytest.approx((3.0 + DIAGONAL) / 4)
    assert engine.state.metrics["misses"] == 1
    with open(tmp_path / "misses_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["filename"], float(r["class0"]), float(r["class1"])) for r in rows] == [
        ("/data/case_a.nii.gz", 0.0, 0.0), ("/data/case_b.nii.gz", 0.0, 1.0)]


def test_without_units_writes_means_and_no_units_block(tmp_path: Path) -> None:
    engine = Engine(lambda e, batch: batch)
    HausdorffDistanceMM(output_transform=from_engine(["pred", "label"])).attach(engine, "hd")
    CaseMetricsWriter(tmp_path).attach(engine)
    engine.run([[_case("c", {1: (2, 2, 2)}, {1: (2, 2, 2)})]])
    report = json.loads((tmp_path / "c_metrics.json").read_text())
    assert "units" not in report and report["hd"] == {"class0": 0.0, "class1": 0.0, "mean": 0.0}


def _h5_case(case_id: str) -> dict:
    case = _case(case_id, {1: (2, 2, 2)}, {1: (2, 2, 3)})  # one voxel off along z
    case["image"].meta["filename_or_obj"] = f"/data/LA/{case_id}/mri_norm2.h5::image"
    case["label"].meta["filename_or_obj"] = f"/data/LA/{case_id}/mri_norm2.h5::label"
    case["label"].affine = torch.eye(4, dtype=torch.float64)  # what the H5Reader gives: no spacing in the file
    return case


@pytest.mark.parametrize("spacing", [None, 0.625])
def test_h5_cases_get_unique_names_and_honest_units(tmp_path: Path, spacing: float | None) -> None:
    """SSL4MIS keeps every case in `<id>/mri_norm2.h5`: one JSON per case, in voxels unless a spacing is given."""
    engine = Engine(lambda e, batch: batch)
    transform = from_engine(["pred", "label"])
    HausdorffDistanceMM(spacing=spacing, output_transform=transform).attach(engine, "hd95")
    CaseMetricsWriter(tmp_path, class_names=["organ", "lesion"], units=UNITS, spacing=spacing).attach(engine)
    if spacing is None:
        with pytest.warns(UserWarning, match="in voxels, not mm"):
            engine.run([[_h5_case("CASE04")], [_h5_case("CASE05")]])
    else:
        engine.run([[_h5_case("CASE04")], [_h5_case("CASE05")]])
    written = sorted(p.name for p in tmp_path.glob("*_metrics.json"))
    assert written == ["CASE04_mri_norm2_metrics.json", "CASE05_mri_norm2_metrics.json"]
    report = json.loads((tmp_path / written[0]).read_text())
    if spacing is None:
        assert report["spacing_mm"] is None and "in voxels" in report["spacing_note"]
        assert report["miss_penalty_voxels"] == pytest.approx(8 * 3**0.5) and "miss_penalty_mm" not in report
        assert report["units"]["hd95"] == "voxel" and report["hd95"]["organ"] == 1.0
    else:
        assert report["spacing_mm"] == [0.625] * 3 and report["units"]["hd95"] == "mm"
        assert report["miss_penalty_mm"] == pytest.approx(0.625 * 8 * 3**0.5)
        assert report["hd95"]["organ"] == pytest.approx(0.625)


def test_case_names_add_parent_folders_only_where_file_names_repeat() -> None:
    assert case_names(["/d/imagesTs/test_000.nii.gz", "/d/imagesTs/test_001.nii.gz"]) == ["test_000", "test_001"]
    assert case_names(["/LA/A/mri_norm2.h5::image", "/LA/B/mri_norm2.h5::image"]) == ["A_mri_norm2", "B_mri_norm2"]
    assert case_names(["/x/a.nii.gz", "/x/a.nii.gz"]) == ["a_000", "a_001"]
