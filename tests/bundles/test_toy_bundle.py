"""The extension points through a real bundle config, before any real method uses them.

The toy bundle (a method with a second network, its own optimiser, a buffer that changes every step, method state
and a ramp with a start offset; ``tests/toy_method.py``) is generated from ``templates/bundle`` plus
``tests/bundles/toy/overlay.json`` exactly like the shipped bundles, then trained through ``monai.bundle run``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, run

from semiseg.bundle_config import write_bundle
from tests.bundles.conftest import REPO, bundle_overrides, restore_fresh
from tests.helpers import states_equal

HERE = Path(__file__).resolve().parent
CHECKPOINT_KEYS = {"model", "optimizer", "lr_scheduler", "trainer", "run_record", "critic", "critic_optimizer",
                   "critic_rampup", "method", "best_weights"}


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bundles") / "toy"
    root.mkdir()
    shutil.copy(HERE / "toy" / "overlay.json", root / "overlay.json")
    write_bundle(root)
    return root


def test_checkpoint_round_trip_restores_every_part(toy_bundle: Path, tiny_demo: Path, tmp_path: Path) -> None:
    train = str(toy_bundle / "configs" / "train.json")
    overrides = bundle_overrides(tiny_demo, tmp_path, iterations_per_epoch=2, val_interval=10)
    run("training", config_file=train, max_iterations=2, **overrides)
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS
    assert saved["trainer"]["iteration"] == 2
    assert int(saved["critic"]["steps"]) == 4  # one main-phase and one second-phase forward per iteration
    assert saved["method"]["updates"] == 2 and saved["critic_optimizer"]["state"]

    objects = restore_fresh([train], {**overrides, "max_iterations": 4},
                            check_differs=lambda objs: not states_equal(objs["critic"].state_dict(), saved["critic"]))
    for key in CHECKPOINT_KEYS:
        restored = dict(objects[key].state_dict())
        if key == "trainer":  # a resume keeps the new, larger budget (MONAI CheckpointLoader) and all the rest
            assert restored.pop("max_epochs") == 2 and saved[key].pop("max_epochs") == 1
        assert states_equal(restored, dict(saved[key])), f"{key} was not restored exactly"


def test_multi_gpu_config_wraps_every_part_and_trains_with_torchrun_on_cpu(
    toy_bundle: Path, tiny_demo: Path, tmp_path: Path
) -> None:
    configs = [str(toy_bundle / "configs" / "train.json"), str(toy_bundle / "configs" / "multi_gpu_train.json")]
    merged = ConfigParser()
    merged.read_config(configs)
    for part in ("network", "critic"):
        assert merged[part]["_target_"] == "torch.nn.parallel.DistributedDataParallel", part

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "monai.bundle", "run", "training", "--config_file", str(configs)]
    for key, value in bundle_overrides(tiny_demo, tmp_path, max_iterations=2, iterations_per_epoch=2,
                                       val_interval=10).items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert set(saved) == CHECKPOINT_KEYS and saved["trainer"]["iteration"] == 2
    assert not any(k.startswith("module.") for k in saved["critic"])  # saved unwrapped, loadable without DDP
