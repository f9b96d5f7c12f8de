"""The UGPCL bundle with its contrastive term switched on within a few iterations.

The parametrised smoke test (``tests/bundles/test_bundles.py``) trains 3 iterations with the paper's start at step
1000, so the contrastive loss never runs there. Here ``contrast_start`` is 0 (the term is on from the second
iteration), through ``python -m monai.bundle run training`` as a user runs it, and the logged term, the queues in
the checkpoint and their restoration on resume are checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from tests.bundles.conftest import REPO, bundle_overrides, config, restore_fresh
from tests.helpers import states_equal


def test_contrastive_term_runs_is_logged_and_queues_resume(tiny_demo: Path, tmp_path: Path) -> None:
    overrides = bundle_overrides(tiny_demo, tmp_path, max_iterations=3, iterations_per_epoch=3, val_interval=10,
                                 contrast_start=0)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config("ugpcl", "train.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]

    # logged every iteration (log_every 1): off at iteration 1 (step 0 is not after step 0), on at 2 and 3
    values = [float(v) for v in re.findall(r"contrast_loss: ([-+0-9.eE]+)", log)]
    assert len(values) == 3, log[-3000:]
    assert values[0] == 0.0 and all(v != 0.0 for v in values[1:]), values

    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    method = saved["method"]
    assert set(method) == {"segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr", "queue_rng_state"}
    assert method["segment_queue"].shape == (3, 100, 256)
    assert int(method["segment_queue_ptr"][1:].sum()) > 0  # two updates enqueued foreground keys
    assert int(method["pixel_queue_ptr"][0]) == 0 and not method["pixel_queue"][0].any()  # background: never

    objects = restore_fresh([config("ugpcl", "train.json")], {**overrides, "max_iterations": 6},
                            check_differs=lambda objs: not states_equal(objs["method"].state_dict(), method))
    assert states_equal(objects["method"].state_dict(), method)
