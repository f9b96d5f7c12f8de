"""Summaries of MetricsSaver CSVs: distances in mm with misses penalised, never skipped (docs/architecture.md §5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semiseg.reporting import format_table, read_metric_csvs

CLASSES = ("organ", "lesion")
PENALTY = 83.14  # image diagonal in mm of a 32^3 1.5-mm volume, as the distance metrics write it


def _write(eval_dir: Path, metric: str, rows: dict[str, tuple[float, float]]) -> None:
    lines = ["filename,class0,class1,mean"]
    lines += [f"/data/{case}.nii.gz,{a:.4f},{b:.4f},{(a + b) / 2:.4f}" for case, (a, b) in rows.items()]
    (eval_dir / f"{metric}_raw.csv").write_text("\n".join(lines) + "\n")


def _eval_dir(tmp_path: Path, hd95_b_lesion: float = PENALTY) -> Path:
    _write(tmp_path, "dice", {"a": (0.9, 0.8), "b": (0.7, 0.0)})
    _write(tmp_path, "hd95", {"a": (2.0, 4.0), "b": (6.0, hd95_b_lesion)})
    _write(tmp_path, "asd", {"a": (1.0, 1.0), "b": (2.0, PENALTY)})
    _write(tmp_path, "misses", {"a": (0.0, 0.0), "b": (0.0, 1.0)})
    return tmp_path


def test_means_keep_the_penalised_misses_and_count_them(tmp_path: Path) -> None:
    result = read_metric_csvs(_eval_dir(tmp_path), CLASSES)
    assert result["mean"]["hd95"]["lesion"] == pytest.approx((4.0 + PENALTY) / 2)
    assert result["mean"]["asd"]["mean"] == pytest.approx((1.5 + (1.0 + PENALTY) / 2) / 2)
    assert result["misses"] == {"organ": 0, "lesion": 1, "total": 1}
    assert result["cases"]["b"]["misses"] == {"organ": 0, "lesion": 1}
    assert result["units"] == {"dice": "fraction", "hd95": "mm", "asd": "mm", "misses": "count"}


def test_nan_distance_is_refused_not_skipped(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"hd95 of class 'lesion' in case 'b' is nan.*Re-run"):
        read_metric_csvs(_eval_dir(tmp_path, hd95_b_lesion=float("nan")), CLASSES)


def test_missing_miss_csv_names_the_file(tmp_path: Path) -> None:
    eval_dir = _eval_dir(tmp_path)
    (eval_dir / "misses_raw.csv").unlink()
    with pytest.raises(FileNotFoundError, match="misses_raw.csv"):
        read_metric_csvs(eval_dir, CLASSES)
    assert "misses" not in read_metric_csvs(eval_dir, CLASSES, misses=None)


def test_table_names_mm_and_shows_misses(tmp_path: Path) -> None:
    table = format_table({"supervised": read_metric_csvs(_eval_dir(tmp_path), CLASSES)})
    header, _, row, note = table.splitlines()
    assert header.split()[1:] == [
        "dice", "organ", "dice", "lesion", "dice", "mean",
        "hd95[mm]", "organ", "hd95[mm]", "lesion", "hd95[mm]", "mean",
        "asd[mm]", "organ", "asd[mm]", "lesion", "asd[mm]", "mean",
        "misses", "organ", "misses", "lesion", "misses", "total",
    ]
    assert row.split()[-3:] == ["0", "1", "1"]
    assert "in mm" in note and "image diagonal" in note and "over the 2 held-out" in note


def test_cases_sharing_a_file_name_stay_apart(tmp_path: Path) -> None:
    for metric in ("dice", "hd95", "asd", "misses"):
        (tmp_path / f"{metric}_raw.csv").write_text(
            "filename,class0,mean\n/LA/CASE04/mri_norm2.h5::image,1.0000,1.0000\n"
            "/LA/CASE05/mri_norm2.h5::image,0.0000,0.0000\n"
        )
    result = read_metric_csvs(tmp_path, ["atrium"])
    assert set(result["cases"]) == {"CASE04_mri_norm2", "CASE05_mri_norm2"}
    assert result["mean"]["hd95"]["atrium"] == 0.5 and result["misses"] == {"atrium": 1, "total": 1}


def test_units_come_from_the_case_files_and_must_agree(tmp_path: Path) -> None:
    eval_dir = _eval_dir(tmp_path)
    voxel = {"dice": "fraction", "hd95": "voxel", "asd": "voxel", "misses": "count"}
    for case in ("a", "b"):
        (eval_dir / f"{case}_metrics.json").write_text(json.dumps({"units": voxel}))
    result = read_metric_csvs(eval_dir, CLASSES)
    assert result["units"] == voxel
    table = format_table({"h5 data": result})
    assert "hd95[voxel] organ" in table and "in voxels (the files store no voxel spacing)" in table
    (eval_dir / "b_metrics.json").write_text(json.dumps({"units": {**voxel, "hd95": "mm"}}))
    with pytest.raises(ValueError, match=r"hd95 is in voxel for case 'a' but in mm for case 'b'"):
        read_metric_csvs(eval_dir, CLASSES)
