"""The bpl bundle beyond the generic smoke test: the pseudo-label and KL terms reached within a few iterations, the
threshold trajectory (CSV from training, PNG from evaluate), the head and warm-up restored from the checkpoint,
``batch_u 0`` as plain supervised training, and the BraTS overlay."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from monai.bundle import ConfigParser, run

from tests.bundles.conftest import bundle_overrides, config, restore_fresh
from tests.helpers import states_equal

TRAIN = config("bpl", "train.json")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pseudo_terms_reached_trajectory_written_and_head_restored(tiny_demo: Path, tmp_path: Path) -> None:
    common = bundle_overrides(tiny_demo, tmp_path)
    # warm-up from the first iteration over a quarter of the 4 iterations: alpha = 0, then 1
    run("training", config_file=TRAIN, max_iterations=4, iterations_per_epoch=2, val_interval=2, warmup_start=0.0,
        warmup=0.25, **common)
    rows = _rows(tmp_path / "eval" / "threshold_trajectory.csv")
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["bpl_alpha"]) == 0.0 and float(rows[0]["pseudo_kept"]) == 0.0
    assert all(float(r["bpl_alpha"]) == 1.0 for r in rows[1:])
    assert any(float(r["pseudo_kept"]) == 1.0 for r in rows[1:]), rows
    for r in rows:  # the sample itself (no fallback to the prior mean); the terms are kept only for 0 < tau < 1
        assert math.isfinite(float(r["threshold"])) and float(r["threshold_sigma"]) > 0.0
        assert float(r["pseudo_kept"]) == 0.0 or 0.0 < float(r["threshold"]) < 1.0

    checkpoint = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert {"threshold_head", "warmup"} <= set(checkpoint)
    restored = restore_fresh(
        [TRAIN], {**common, "max_iterations": 4, "iterations_per_epoch": 2, "warmup_start": 0.0, "warmup": 0.25},
        check_differs=lambda objs: not states_equal(objs["threshold_head"].state_dict(), checkpoint["threshold_head"]),
    )
    assert states_equal(restored["threshold_head"].state_dict(), checkpoint["threshold_head"])
    assert states_equal(dict(restored["warmup"].state_dict()), dict(checkpoint["warmup"]))

    run(config_file=[TRAIN, config("bpl", "evaluate.json")], **common)
    assert (tmp_path / "eval" / "threshold_trajectory.png").stat().st_size > 0


def test_batch_u_zero_trains_without_unlabelled_data(tiny_demo: Path, tmp_path: Path) -> None:
    common = bundle_overrides(tiny_demo, tmp_path)
    run("training", config_file=TRAIN, max_iterations=2, iterations_per_epoch=2, val_interval=1, batch_u=0, **common)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert _rows(tmp_path / "eval" / "threshold_trajectory.csv") == []  # no pseudo-label terms: no rows


def test_brats_overlay_sets_the_paper_protocol() -> None:
    parser = ConfigParser()
    parser.read_config([TRAIN, config("bpl", "train_brats.json")])
    assert parser["in_channels"] == 4 and parser["roi_size"] == [128, 128, 32]
    assert parser["max_iterations"] == 25000 and parser["network_def"]["out_channels"] == 1
    assert parser.get_parsed_content("optimizer").defaults["weight_decay"] == 0.0005


def test_threshold_is_the_sample_by_default_and_the_fallback_a_setting() -> None:
    # EM-BPL-Semi-Seg@96690d1 libs/Loss.py lines 111-112: the prior-mean fallback is commented out
    parser = ConfigParser()
    parser.read_config(TRAIN)
    assert parser["threshold_fallback"] is False
    assert parser.get_parsed_content("method").threshold_fallback is False
    parser["threshold_fallback"] = "true"  # as python -m monai.bundle run passes --threshold_fallback true
    assert parser.get_parsed_content("method", lazy=False).threshold_fallback is True
