"""CheckpointDirGuard: one run per ckpt_dir (an OS lock naming its holder), the earlier run's files replaced only when
asked and only once the new run starts, folders checked writable first (docs/architecture.md §2, "Checkpoints")."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from semiseg.engines import SemiSupervisedTrainer
from semiseg.errors import format_user_error, user_error
from semiseg.files import WriteError, check_writable
from semiseg.handlers import RUN_FILES, CheckpointDirGuard, CheckpointDirInUse
from semiseg.handlers.checkpoint_dir import LOCK_FILE
from semiseg.methods import SupervisedMethod
from tests.bundles.conftest import BUNDLES, REPO
from tests.helpers import tiny_unet

_HOLD = ("import sys, time; from semiseg.handlers import CheckpointDirGuard; "
         "g = CheckpointDirGuard(sys.argv[1]); g.prepare(); print('held', flush=True); time.sleep(120)")


def _holder(ckpt: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(ckpt)], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_process_is_refused_naming_the_holder_and_the_lock_dies_with_it(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(CheckpointDirInUse) as info:
            CheckpointDirGuard(tmp_path, overwrite=True).prepare()
        line = format_user_error(user_error(info.value)).splitlines()[0]
        assert f"ckpt_dir {tmp_path} is in use by another training run (pid {holder.pid}, holding " in line
        assert "(nothing was run)" in line
    finally:
        holder.kill()
        holder.wait()
    guard = CheckpointDirGuard(tmp_path)  # SIGKILL left no stale lock
    assert guard.prepare() is False and guard.held
    assert (tmp_path / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    guard.release()
    assert not guard.held


def test_the_lock_is_released_when_the_run_ends_completed_or_failed(tmp_path: Path) -> None:
    for fail in (False, True):
        net = tiny_unet()
        trainer = SemiSupervisedTrainer("cpu", 1, [{"image": torch.zeros(1, 1, 8, 8, 8),
                                                    "label": torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)}],
                                        net, torch.optim.SGD(net.parameters(), lr=0.0), SupervisedMethod(),
                                        epoch_length=1)
        guard = CheckpointDirGuard(tmp_path / str(fail))
        guard.prepare()
        guard.attach(trainer)
        if fail:
            trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: 1 / 0)
            with pytest.raises(ZeroDivisionError):
                trainer.run()
        else:
            trainer.run()
        assert not guard.held
        other = CheckpointDirGuard(tmp_path / str(fail))  # in this process or another: free again
        other.acquire()
        assert other.held
        other.release()


def test_a_later_workflow_of_the_same_process_takes_over_a_lock_left_by_a_failed_one(tmp_path: Path) -> None:
    """A run that failed while reading its data never started its trainer; a notebook can still train again."""
    earlier = CheckpointDirGuard(tmp_path)
    earlier.prepare()
    later = CheckpointDirGuard(tmp_path)
    later.prepare()
    assert later.held and not earlier.held
    later.release()


@pytest.mark.parametrize("replaced", [True, False])
def test_overwrite_deletes_every_earlier_file_when_the_trainer_starts_not_before(tmp_path: Path, replaced: bool
                                                                                 ) -> None:
    """The served weights (model.pt, model.json) stay while the new run trains (MONAI Label keeps serving them) and
    are gone at its end: replaced by the new run's, or deleted when it writes none."""
    for name in RUN_FILES:
        (tmp_path / name).write_bytes(b"earlier")
    (tmp_path / "notes.txt").write_text("mine")
    guard = CheckpointDirGuard(tmp_path, overwrite="true")
    guard.prepare()
    assert all((tmp_path / name).exists() for name in RUN_FILES)  # still there: the run has not started
    engine = Engine(lambda e, b: None)
    if replaced:  # what the model.pt saver and the record writer do at COMPLETED, before the guard's handler
        engine.add_event_handler(Events.COMPLETED, lambda e: [(tmp_path / ".new").write_bytes(b"new"),
                                                              os.replace(tmp_path / ".new", tmp_path / "model.pt")])
    guard.attach(engine)
    seen: list[list[str]] = []
    engine.add_event_handler(Events.STARTED, lambda e: seen.append(sorted(p.name for p in tmp_path.iterdir())))
    engine.run([0], max_epochs=1)
    assert seen == [sorted([LOCK_FILE, "model.json", "model.pt", "notes.txt"])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_FILE, "notes.txt"] + ["model.pt"] * replaced)
    assert not replaced or (tmp_path / "model.pt").read_bytes() == b"new"
    assert not guard.held  # a plain Ignite engine: released at COMPLETED


def test_a_fresh_run_over_a_checkpoint_is_refused_and_the_lock_released(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"state of a killed run")
    guard = CheckpointDirGuard(tmp_path)
    with pytest.raises(FileExistsError, match=r"checkpoint\.pt exists: an earlier run stopped before it finished"):
        guard.prepare()
    assert not guard.held and (tmp_path / "checkpoint.pt").read_bytes() == b"state of a killed run"


@pytest.mark.parametrize("setting", ["ckpt_dir", "output_dir"])
@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_unwritable_folders_stop_the_run_before_any_work(tmp_path: Path, monkeypatch, setting: str, code: int) -> None:
    """As root a chmod-ed folder stays writable: the probe's write fails as a read-only or full disk would."""
    bad = tmp_path / setting
    real_write = os.write

    def write(fd: int, data) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(bad) + os.sep):
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    guard = CheckpointDirGuard(tmp_path / "ckpt_dir", output_dirs=[tmp_path / "output_dir"])
    with pytest.raises(WriteError) as info:
        guard.prepare()
    name = errno.errorcode[code]
    assert str(info.value).startswith(f"{setting} {bad} is not writable: {os.strerror(code)} ({name}); ")
    assert info.value.errno == code and not guard.held
    assert sorted(p.name for p in bad.iterdir()) == []  # the probe is gone


def test_check_writable_without_create_leaves_a_missing_folder_missing(tmp_path: Path) -> None:
    assert check_writable(tmp_path / "a" / "b", "output_dir", create=False) == str(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match=r"output_dir \S+file is a file, not a folder"):
        check_writable(tmp_path / "file", "output_dir")


def test_run_files_name_every_file_a_bundle_writes_into_ckpt_dir() -> None:
    """A bundle that saves a new file into ckpt_dir must add it to RUN_FILES (or --overwrite would leave it)."""
    written = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if str(node.get("_target_", "")).endswith("AtomicCheckpointSaver"):
                written.update(node[k] for k in ("final_filename", "interval_filename", "key_metric_filename")
                               if isinstance(node.get(k), str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for bundle in BUNDLES:
        for name in ("train.json", "multi_gpu_train.json"):
            walk(json.loads((REPO / "bundles" / bundle / "configs" / name).read_text()))
    assert {"model.pt", "checkpoint.pt", "teacher.pt", "model_2.pt"} <= written
    assert written <= set(RUN_FILES), sorted(written - set(RUN_FILES))
