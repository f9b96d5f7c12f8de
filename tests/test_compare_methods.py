"""``scripts/compare_methods.py``, the results protocol's driver: a run is trained and evaluated as a user runs the
bundle, its metrics are tabulated, ``--resume`` reuses finished runs, ``--binary`` evaluates one foreground class."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_methods.py"


def _compare(tiny_demo: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--variants", "supervised", "--seeds", "0", "--iterations", "2",
           "--parallel", "1", "--data", str(tiny_demo), "--out", str(out),
           "--set", "num_val=1", "roi_size=[32,32,32]", "iterations_per_epoch=2", "val_interval=1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_binary_run_is_tabulated_then_reused(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    before = (tiny_demo / "dataset.json").read_text()
    first = _compare(tiny_demo, out, "--binary")
    run = json.loads((out / "supervised_seed0" / "run.json").read_text())
    assert set(run["student"]["dice"]) == {"foreground", "mean"}
    assert run["train_s"] > 0
    table = (out / "results.md").read_text()
    assert "| variant | weights | seeds | Dice foreground | Dice mean |" in table, table
    assert "reused" not in first.stdout

    second = _compare(tiny_demo, out, "--binary", "--resume")
    assert "supervised                   seed=0: finished before, reused" in second.stdout
    summary = json.loads((out / "compare.json").read_text())
    assert summary["runs"] == [run] and summary["classes"] == ["foreground"]
    assert (tiny_demo / "dataset.json").read_text() == before  # a --data folder is read, never regenerated
