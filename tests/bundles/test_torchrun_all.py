"""Every bundle's ``multi_gpu_train.json`` trains under ``torchrun --nproc_per_node=2`` (gloo on CPU processes).

About 30 s per bundle on 2 cores, so this runs in its own CI step (``make test-torchrun``, marker ``torchrun``),
outside the 15-minute ``make test``. The multi-node form of the same command is in docs/architecture.md §2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.bundles.conftest import BUNDLES, REPO, bundle_overrides, config

pytestmark = pytest.mark.torchrun


def torchrun_training(configs: list[str], overrides: dict, nproc: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=nproc -m monai.bundle run training`` on CPU with a free port, from the repo root.

    Args:
        configs: the config files (train.json, multi_gpu_train.json).
        overrides: ``--id value`` pairs (lists are passed as JSON).
        nproc: processes.

    Returns:
        The finished process (stdout, stderr captured).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
           f"--master_port={port}", "-m", "monai.bundle", "run", "training", "--config_file", str(configs)]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_train_runs_under_torchrun(bundle: str, tiny_demo: Path, tmp_path: Path) -> None:
    configs = [config(bundle, "train.json"), config(bundle, "multi_gpu_train.json")]
    # 4 training cases: 2 labelled (one per rank), 1 validation, 1 unlabelled (DistributedSampler pads it to 2)
    overrides = bundle_overrides(tiny_demo, tmp_path, max_iterations=2, iterations_per_epoch=2, val_interval=1)
    result = torchrun_training(configs, overrides)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert model and not any(k.startswith("module.") for k in model)  # saved unwrapped: loads without DDP
