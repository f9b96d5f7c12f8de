"""Bundles never lose good weights: resume equals an uninterrupted run, a larger budget gets schedules that fit, a
fresh run does not replace trained weights, a NaN stop keeps the last good checkpoint (docs/architecture.md §2,
"Checkpoints")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import run

from tests.bundles.conftest import REPO, config
from tests.bundles.conftest import bundle_overrides as _overrides
from tests.helpers import states_equal


def _flat(obj: Any, path: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in _flat(value, f"{path}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in _flat(value, f"{path}/{i}").items()}
    return {path: obj}


def _messages(error: BaseException | None) -> str:
    """The messages of an exception and of those it was raised from (MONAI wraps config errors)."""
    messages = []
    while error is not None:
        messages.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(messages)


def _different(a: Path, b: Path) -> list[str]:
    """Entries of two checkpoint files that are not bitwise equal (tensors with torch.equal, the rest with ==)."""
    left, right = (_flat(torch.load(p, weights_only=True)) for p in (a, b))
    assert left.keys() == right.keys()
    return [k for k in left if not states_equal(left[k], right[k])]


def test_resume_with_a_larger_budget_continues_with_schedules_that_fit(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path, iterations_per_epoch=2, val_interval=10)
    run("training", config_file=config("mean_teacher", "train.json"), max_iterations=2, **common)
    first = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert first["optimizer"]["param_groups"][0]["lr"] == 0.0  # the 2-iteration schedule ended
    run("training", config_file=config("mean_teacher", "train.json"), max_iterations=4, resume=True, **common)
    second = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert (first["trainer"]["iteration"], second["trainer"]["iteration"]) == (2, 4)
    assert second["lr_scheduler"]["total_iters"] == 4  # was 2: the restored schedule now spans the new budget
    # the student trained on after the resume (at learning rate 0 it would not have moved)
    assert any(not torch.equal(second["model"][k], first["model"][k]) for k in first["model"])
    assert second["rampup"]["every"] == 1  # the ramp spans the new budget: max(1, 4 // 40) iterations a step
    assert any(not torch.equal(second["teacher"][k], first["teacher"][k]) for k in first["teacher"])
    teacher = torch.load(tmp_path / "models" / "teacher.pt", weights_only=True)
    assert states_equal(teacher, second["teacher"])  # the EMA teacher's final weights, for inference
    assert second["run_record"]["bundle"] == "mean_teacher" and second["run_record"]["settings"]["ema_decay"] == 0.99


def test_resume_refuses_a_setting_the_restored_state_cannot_honour(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path, iterations_per_epoch=2, val_interval=10)
    run("training", config_file=config("supervised", "train.json"), max_iterations=2, **common)
    saved = (tmp_path / "models" / "checkpoint.pt").read_bytes()
    for change, expected in (({"learning_rate": 0.5}, "was trained with learning_rate=0.01, this run sets 0.5"),
                             ({"max_iterations": 1}, "is at iteration 2, beyond --max_iterations 1")):
        with pytest.raises(Exception) as info:
            run("training", config_file=config("supervised", "train.json"), resume=True,
                **{"max_iterations": 2, **common, **change})
        assert expected in _messages(info.value)
    assert (tmp_path / "models" / "checkpoint.pt").read_bytes() == saved
    # the same settings, given as the command line gives them, continue; the restored optimiser is the saved one
    run("training", config_file=config("supervised", "train.json"), resume="true", max_iterations=4,
        binarise_label="false", **common)
    state = torch.load(tmp_path / "models" / "checkpoint.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 4 and state["optimizer"]["param_groups"][0]["initial_lr"] == 0.01


def test_a_fresh_run_refuses_to_replace_trained_weights_unless_told(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path, iterations_per_epoch=1, val_interval=10, max_iterations=1)
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"trained weights")
    with pytest.raises(Exception) as info:
        run("training", config_file=config("supervised", "train.json"), **common)
    message = _messages(info.value)
    assert str(models / "model.pt") in message and "--resume true" in message and "--overwrite true" in message
    assert (models / "model.pt").read_bytes() == b"trained weights" and not (models / "checkpoint.pt").exists()
    run("training", config_file=config("supervised", "train.json"), overwrite=True, **common)
    assert torch.load(models / "model.pt", weights_only=True).keys() == torch.load(
        models / "checkpoint.pt", weights_only=True)["model"].keys()


def test_a_run_that_diverges_keeps_finite_weights_and_writes_no_model_pt(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path, iterations_per_epoch=2, val_interval=10, max_iterations=20)
    with pytest.raises(Exception) as info:
        run("training", config_file=config("mean_teacher", "train.json"), learning_rate=1e3, **common)
    assert "is finite but its gradients are not" in _messages(info.value) or "non-finite" in _messages(info.value)
    models = tmp_path / "models"
    assert not (models / "model.pt").exists() and not (models / "teacher.pt").exists()
    saved = torch.load(models / "checkpoint.pt", weights_only=True)
    floats = [v for v in _flat(saved).values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert floats and all(bool(torch.isfinite(v).all()) for v in floats)
    assert 1 <= saved["trainer"]["iteration"] < 20


def _bundle_command(out: Path, tiny_demo: Path, **extra: Any) -> list[str]:
    overrides = _overrides(tiny_demo, out, max_iterations=8, iterations_per_epoch=2, val_interval=2, **extra)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           config("mean_teacher", "train.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    return cmd


def test_a_run_killed_after_a_checkpoint_and_resumed_ends_bitwise_equal_to_an_uninterrupted_one(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """SIGKILL after the 2nd epoch checkpoint (iteration 4 of 8), `--resume true`: every tensor of model.pt,
    teacher.pt and checkpoint.pt (weights, optimiser, schedules, data positions, random generators) equals the
    uninterrupted run's, on CPU with num_workers 0 (mean_teacher: dropout, teacher noise, shuffling, random crops)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "shared"), str(REPO)]))
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("whole", "killed", "resumed")}  # noqa: SIM115
    whole = subprocess.Popen(_bundle_command(tmp_path / "whole", tiny_demo), cwd=REPO, env=env,
                             stdout=logs["whole"], stderr=subprocess.STDOUT)
    killed = subprocess.Popen(_bundle_command(tmp_path / "killed", tiny_demo), cwd=REPO, env=env,
                              stdout=logs["killed"], stderr=subprocess.STDOUT)
    models = tmp_path / "killed" / "models"
    checkpoint, seen, deadline = models / "checkpoint.pt", None, time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # poll the checkpoint's iteration, not a sleep
            assert killed.poll() is None, "ended before the kill: " + (tmp_path / "killed.log").read_text()[-2000:]
            stamp = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                if torch.load(checkpoint, weights_only=True)["trainer"]["iteration"] >= 4:
                    killed.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.01)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    assert killed.returncode == -signal.SIGKILL and not (models / "model.pt").exists()
    iteration = torch.load(checkpoint, weights_only=True)["trainer"]["iteration"]
    assert 4 <= iteration < 8
    stale = models / ".semiseg-checkpoint.pt.k1ll3d.partial"  # what a kill during a write leaves
    stale.write_bytes(b"half a checkpoint")
    kept = checkpoint.read_bytes()

    # a plain re-run (no --resume) refuses: the killed run's checkpoint.pt is not replaced, no stale lock stops it
    again = subprocess.run(_bundle_command(tmp_path / "killed", tiny_demo), cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1, again.stderr[-3000:]
    assert f"semiseg: error: {checkpoint} exists: an earlier run stopped before it finished" in again.stderr
    assert "Pass --resume true to continue that run" in again.stderr
    assert checkpoint.read_bytes() == kept and stale.exists()

    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # a live writer's temp file
    writing = models / f".semiseg-checkpoint.pt.{live.pid}.w7x2yz.partial"
    writing.write_bytes(b"being written")
    resumed = subprocess.run(_bundle_command(tmp_path / "killed", tiny_demo, resume="true"), cwd=REPO, env=env,
                             stdout=logs["resumed"], stderr=subprocess.STDOUT, timeout=300)
    live.kill()
    live.wait()
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    assert resumed.returncode == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    for log in logs.values():
        log.close()
    assert not stale.exists() and writing.read_bytes() == b"being written"  # only the dead writer's file went
    assert "Restored all variables" in (tmp_path / "resumed.log").read_text()
    for name in ("model.pt", "teacher.pt", "checkpoint.pt"):
        assert _different(tmp_path / "whole" / "models" / name, models / name) == [], name


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_second_run_on_a_ckpt_dir_in_use_is_refused_naming_the_first_which_finishes_intact(
    tiny_demo: Path, tmp_path: Path
) -> None:
    """Two real training processes on one ckpt_dir: the first is paused (SIGSTOP) while it holds the folder's lock,
    the second (with --overwrite true) refuses naming its pid and changes nothing, the first then completes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO / "shared"), str(REPO)]))
    models = tmp_path / "run" / "models"
    lock = models / ".semiseg-run.lock"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(_bundle_command(tmp_path / "run", tiny_demo), cwd=REPO, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not (lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]):
                assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first run never took the lock"
                time.sleep(0.01)
            first.send_signal(signal.SIGSTOP)
            before = _files(models)
            second = subprocess.run(_bundle_command(tmp_path / "run", tiny_demo, overwrite="true"), cwd=REPO,
                                    env=env, capture_output=True, text=True, timeout=300)
            assert second.returncode == 1, second.stderr[-3000:]
            assert (f"semiseg: error: ckpt_dir {models} is in use by another training run (pid {first.pid}, "
                    f"holding {lock})") in second.stderr
            assert _files(models) == before
            first.send_signal(signal.SIGCONT)
            assert first.wait(timeout=300) == 0, (tmp_path / "first.log").read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.send_signal(signal.SIGCONT)
                first.kill()
    assert torch.load(models / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 8
    final = torch.load(models / "model.pt", weights_only=True)
    assert states_equal(final, torch.load(models / "checkpoint.pt", weights_only=True)["model"])
    assert sorted(_files(models)) == sorted([".semiseg-run.lock", "checkpoint.pt", "model.json", "model.pt",
                                             "teacher.pt"])
