"""The two bundles with a second trainable part, through their real configs: DAN (a discriminator with its own Adam,
trained in the second update phase) and CPS (a second student with its own SGD, stepped with the first).

Every part, optimiser, scheduler and ramp is restored exactly from a checkpoint written after two iterations; under
``multi_gpu_train.json`` every part is DDP-wrapped and stays equal across two gloo processes on CPU; CPS writes its
second student, infers and evaluates with the mean of both students on request and trains with strong views
(docs/architecture.md §2, "Methods with more than one trainable part").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from tests.bundles.conftest import REPO, bundle_overrides, config, restore_fresh
from tests.helpers import states_equal

BASE_KEYS = {"model", "optimizer", "lr_scheduler", "trainer", "run_record", "rampup", "best_weights"}
EXTRA_KEYS = {
    "adversarial": {"discriminator", "discriminator_optimizer"},
    "cps": {"model_2", "optimizer_2", "lr_scheduler_2"},
}
EXTRA_PART = {"adversarial": ("discriminator", "discriminator"), "cps": ("network_2", "model_2")}  # (part, ckpt key)
SMALL = {"adversarial": {"discriminator_features": 4}, "cps": {}}  # a small discriminator keeps the tests fast


@pytest.fixture(scope="module", params=["adversarial", "cps"])
def trained(request: pytest.FixtureRequest, tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory):
    """``(bundle, overrides, output folder)`` of a two-iteration training run of the bundle."""
    bundle, out = request.param, tmp_path_factory.mktemp(f"trained_{request.param}")
    overrides = bundle_overrides(tiny_demo, out, iterations_per_epoch=2, val_interval=10, **SMALL[bundle])
    run("training", config_file=config(bundle, "train.json"), max_iterations=2, **overrides)
    return bundle, overrides, out


def test_checkpoint_after_two_iterations_restores_every_part_exactly(trained) -> None:
    bundle, overrides, out = trained
    saved = torch.load(out / "models" / "checkpoint.pt", weights_only=True)
    assert set(saved) == BASE_KEYS | EXTRA_KEYS[bundle]
    assert saved["trainer"]["iteration"] == 2
    part, key = EXTRA_PART[bundle]
    objects = restore_fresh(
        [config(bundle, "train.json")], {**overrides, "max_iterations": 4},
        check_differs=lambda objs: not states_equal(objs[key].state_dict(), saved[key]),
    )
    for name in saved:
        restored = dict(objects[name].state_dict())
        if name == "trainer":  # a resume keeps the new, larger budget (MONAI CheckpointLoader) and all the rest
            assert restored.pop("max_epochs") == 2 and saved[name].pop("max_epochs") == 1
        assert states_equal(restored, dict(saved[name])), f"{name} was not restored exactly"
    assert objects["trainer"].networks[part] is objects[key]  # the checkpointed part is the one the trainer trains

    if bundle == "adversarial":
        adam = saved["discriminator_optimizer"]
        assert all(int(s["step"]) == 2 for s in adam["state"].values())  # one discriminator step per iteration
        assert adam["param_groups"][0]["lr"] == 1e-4 and list(adam["param_groups"][0]["betas"]) == [0.9, 0.99]
        assert "initial_lr" not in adam["param_groups"][0]  # no LR scheduler: the reference keeps 1e-4 throughout
    else:
        # the second student: its own init (xavier vs kaiming), its own SGD, the same poly decay as the first
        assert not states_equal(saved["model"], saved["model_2"])
        assert saved["lr_scheduler_2"]["last_epoch"] == saved["lr_scheduler"]["last_epoch"] == 2
        assert saved["optimizer_2"]["param_groups"][0]["lr"] == saved["optimizer"]["param_groups"][0]["lr"] < 0.01
        model_2 = torch.load(out / "models" / "model_2.pt", weights_only=True)
        assert states_equal(model_2, saved["model_2"])


@pytest.mark.parametrize("trained", ["cps"], indirect=True)
def test_cps_infers_with_the_first_student_or_the_mean_of_both(trained, tiny_demo: Path) -> None:
    bundle, _, out = trained
    entropy = {}
    for ensemble in ("false", "true"):  # as the command line passes them
        folder = out / f"infer_{ensemble}"
        run(config_file=config(bundle, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(out / "models"),
            output_dir=str(folder), roi_size=[32, 32, 32], ensemble_students=ensemble)
        assert (folder / "test_000_seg.nii.gz").is_file()
        entropy[ensemble] = nib.load(folder / "test_000_entropy.nii.gz").get_fdata()
        assert 0.0 <= entropy[ensemble].min() and entropy[ensemble].max() <= 1.0 + 1e-5
    assert not np.allclose(entropy["false"], entropy["true"])  # the second student's weights were loaded and used


@pytest.mark.parametrize("trained", ["cps"], indirect=True)
def test_cps_evaluates_the_first_student_or_the_mean_of_both(trained, tiny_demo: Path) -> None:
    bundle, overrides, out = trained
    configs = [config(bundle, "train.json"), config(bundle, "evaluate.json")]
    entropy = {}
    for ensemble in ("false", "true"):
        folder = out / f"eval_{ensemble}"
        run(config_file=configs, **{**overrides, "output_dir": str(folder)}, ensemble_students=ensemble)
        assert (folder / "dice_raw.csv").is_file()
        entropy[ensemble] = nib.load(folder / "test_000_entropy.nii.gz").get_fdata()
    run(config_file=config(bundle, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(out / "models"),
        output_dir=str(out / "infer_for_eval"), roi_size=[32, 32, 32], ensemble_students="true")
    inferred = nib.load(out / "infer_for_eval" / "test_000_entropy.nii.gz").get_fdata()
    assert not np.allclose(entropy["false"], entropy["true"])
    np.testing.assert_allclose(entropy["true"], inferred, atol=1e-5)  # evaluate scores what inference writes


def test_cps_trains_with_strong_views(tiny_demo: Path, tmp_path: Path) -> None:
    configs = [config("cps", "train.json"), config("cps", "strong_views.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    assert parser["method"]["student_view"]["_target_"] == "semiseg.data.views.StrongView"
    run("training", config_file=configs, max_iterations=1, **bundle_overrides(tiny_demo, tmp_path, val_interval=10))
    assert torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 1


_DRIVER = """
import json, os, sys
import torch
import torch.distributed as dist
from monai.bundle import ConfigWorkflow

configs, overrides, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
workflow = ConfigWorkflow(config_file=configs, run_id="training", **overrides)
workflow.initialize()
workflow.run()
trainer = workflow.parser.get_parsed_content("train#trainer")
wrapped = {name: type(net).__name__ for name, net in trainer.networks.items()}
states = {name: net.module.state_dict() for name, net in trainer.networks.items()}
torch.save({"wrapped": wrapped, "states": states}, os.path.join(out, f"rank{dist.get_rank()}.pt"))
workflow.finalize()
"""


@pytest.mark.parametrize("bundle", ["adversarial", "cps"])
def test_every_part_is_ddp_wrapped_and_equal_across_two_gloo_ranks(bundle: str, tiny_demo: Path,
                                                                   tmp_path: Path) -> None:
    configs = [config(bundle, "train.json"), config(bundle, "multi_gpu_train.json")]
    part = EXTRA_PART[bundle][0]
    merged = ConfigParser()
    merged.read_config(configs)
    for name in ("network", part):
        assert merged[name]["_target_"] == "torch.nn.parallel.DistributedDataParallel", name
    if bundle == "cps":  # the first student keeps its Kaiming init under DDP too
        assert "init_conv_weights(@network_def, @student_init)" in merged["network"]["module"]

    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    overrides = bundle_overrides(tiny_demo, tmp_path, max_iterations=2, iterations_per_epoch=2, val_interval=10,
                                 **SMALL[bundle])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={port}", str(driver), json.dumps(configs), json.dumps(overrides), str(tmp_path)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for rank in ranks:
        assert rank["wrapped"] == {"network": "DistributedDataParallel", part: "DistributedDataParallel"}
    for name in ("network", part):
        assert states_equal(ranks[0]["states"][name], ranks[1]["states"][name]), f"{name} differs across ranks"
    saved = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 2
    assert states_equal(saved[EXTRA_PART[bundle][1]], ranks[0]["states"][part])  # saved unwrapped, from rank 0
