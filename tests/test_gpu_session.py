"""``scripts/bench/gpu_session.py``, the one script a lent GPU runs: its figures work end to end, here on the CPU.

The GPU is lent for minutes at a time; a bug found there costs the figures. These run the session's pieces with
tiny sizes on the CPU (``data_device: "cpu"`` in place of ``"cuda"``), as ``--smoke`` does for all of them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu_session():
    sys.path.insert(0, str(REPO / "scripts" / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_session", REPO / "scripts" / "bench" / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_session"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_session", None)


def _session(module, tmp_path: Path):
    # 4 training cases: 2 labelled + 2 unlabelled, so every batch has 2 crops (the V-Net's batch norm at 1^3)
    sizes = dataclasses.replace(module.SMOKE, iterations=1, la_cases=5, la_roi=[16, 16, 16], la_volume=[20, 20, 20],
                                infer_shape=[20, 20, 16])
    return module.Session(tmp_path / "session.json", 3600.0, sizes, "cpu", smoke=True)


def test_synthetic_cases_are_an_la_h5_data_set(gpu_session, tmp_path: Path) -> None:
    root = gpu_session.write_h5_cases(tmp_path / "la", 4, [20, 18, 16], 3)
    assert (root / "train.list").read_text().split() == ["case000", "case001", "case002"]
    assert (root / "test.list").read_text().split() == ["case003"]
    with h5py.File(root / "case001" / "mri_norm2.h5") as f:
        image, label = f["image"][:], f["label"][:]
    assert image.shape == label.shape == (20, 18, 16) and image.dtype == np.float32
    assert set(np.unique(label)) == {0, 1, 2}  # every class present, so balanced crops find foreground


def test_end_to_end_inference_and_json_after_every_figure(gpu_session, tmp_path: Path) -> None:
    session = _session(gpu_session, tmp_path)
    la = gpu_session.write_h5_cases(tmp_path / "la", session.sizes.la_cases, session.sizes.la_volume, 2)
    roi = session.sizes.la_roi
    session.figure("la/device", 0, lambda: gpu_session.bundle_end_to_end(
        session, "mean_teacher", ["train.json", "la.json"], la, roi, 2, "cpu", keep="la_student"))
    session.figure("reference", 0, lambda: gpu_session.reference_la_loop(session, la, roi, 2, careful=True, workers=0))
    written = json.loads(session.out.read_text())  # rewritten after each figure
    assert written["errors"] == {}, written["errors"]
    ours = written["figures"]["la/device"]
    assert ours["loader"] == "ThreadDataLoader" and ours["data_device"] == "cpu" and ours["s_per_iteration"] > 0
    assert written["figures"]["reference"]["iterations_per_s"] > 0
    assert "la_student" in session.shared

    result = session.figure("inference", 0, lambda: gpu_session.inference(session))
    assert result is not None, json.loads(session.out.read_text())["errors"]
    assert result["weights"].startswith("the student") and result["windows"] > 1
    assert result["argmax_agreement_amp_vs_fp32"] == 1.0  # no autocast on the CPU: the same numbers
    assert set(result) >= {"amp_sw4", "fp32_sw4", "amp_sw16"}


def test_a_failing_figure_is_recorded_and_the_next_one_runs(gpu_session, tmp_path: Path) -> None:
    session = _session(gpu_session, tmp_path)
    session.figure("broken", 0, lambda: 1 / 0)
    session.figure("later", 0, lambda: {"value": 1.0})
    session.figure("too_long", 10**6, lambda: {"value": 2.0})
    written = json.loads(session.out.read_text())
    assert "ZeroDivisionError" in written["errors"]["broken"]
    assert written["figures"]["later"]["value"] == 1.0
    assert "too_long" in written["skipped"] and "too_long" not in written["figures"]
