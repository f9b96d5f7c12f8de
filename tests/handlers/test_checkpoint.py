"""AtomicCheckpointSaver and the checkpoint folder: atomic writes, no non-finite file, which files each way a run ends
writes (docs/architecture.md §2, "Checkpoints")."""

from __future__ import annotations

import errno
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.handlers import StatsHandler

from semiseg.engines import SemiSupervisedTrainer
from semiseg.errors import SettingError, format_user_error, user_error
from semiseg.files import WriteError
from semiseg.handlers import AtomicCheckpointSaver, prepare_checkpoint_dir
from semiseg.handlers.checkpoint import TEMP_PREFIX, TEMP_SUFFIX, abs_total, clean_stale_temp_files, non_finite_tensors
from semiseg.methods import SupervisedMethod
from tests.helpers import states_equal, tiny_unet


def _bare_engine_saver(tmp_path: Path, net: torch.nn.Module, **kwargs) -> tuple[SemiSupervisedTrainer, dict]:
    trainer = SemiSupervisedTrainer("cpu", 1, [{"image": torch.zeros(1, 1, 8, 8, 8),
                                                "label": torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)}],
                                    net, torch.optim.SGD(net.parameters(), lr=0.0), SupervisedMethod(), epoch_length=1,
                                    nan_policy="skip")  # let NaN weights reach the saver
    objects = {"model": net}
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, **kwargs)
    saver.attach(trainer)
    return trainer, objects


def test_non_finite_checkpoint_is_not_written_and_the_last_good_file_stays(tmp_path, caplog) -> None:
    net = tiny_unet()
    trainer, _ = _bare_engine_saver(tmp_path, net, save_interval=1, epoch_level=False,
                                    interval_filename="checkpoint.pt", n_saved=1)
    trainer.run()
    good = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        next(iter(net.parameters()))[0].fill_(math.nan)
    trainer.state.max_epochs = 2
    with caplog.at_level(logging.ERROR):
        trainer.run()
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert "not writing" in caplog.text and "model.0.conv.weight" in caplog.text
    assert "keeping the last good" in caplog.text and str(tmp_path / "checkpoint.pt") in caplog.text


def test_abs_total_is_finite_exactly_for_finite_gradients_even_huge_ones() -> None:
    grads = [torch.full((3, 4), 1e30), torch.ones(5), torch.empty(0)]
    assert float(abs_total(grads, "cpu")) == pytest.approx(12e30 + 5, rel=1e-6)  # huge but finite: no overflow
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = [g.clone() for g in grads]
        broken[1][2] = bad
        assert not bool(torch.isfinite(abs_total(broken, "cpu"))), bad
    assert float(abs_total([], "cpu")) == 0.0


def test_non_finite_tensors_is_exact_for_finite_values_past_the_l1_range() -> None:
    huge = {"model": {"w": torch.full((4, 4), 3e38)}}  # finite, but their L1 norm overflows float32
    assert non_finite_tensors(huge) == []
    huge["model"]["b"] = torch.tensor([1.0, float("nan")])
    assert non_finite_tensors(huge) == ["model['b']"]


def test_non_finite_tensors_names_nested_entries_and_ignores_integers() -> None:
    state = {"model": {"w": torch.ones(2), "b": torch.tensor([1.0, math.inf])}, "step": torch.tensor(3),
             "opt": {"state": {0: {"buf": torch.tensor([math.nan])}}, "lrs": [0.1]}, "empty": torch.zeros(0)}
    assert non_finite_tensors(state) == ["model['b']", "opt['state'][0]['buf']"]
    assert non_finite_tensors({"model": {"w": torch.ones(2, dtype=torch.bfloat16)}, "best": math.inf}) == []


def test_atomic_write_uses_its_own_temp_pattern_and_stale_temp_files_are_removed_at_attach(
    tmp_path, monkeypatch
) -> None:
    stale = tmp_path / f"{TEMP_PREFIX}checkpoint.pt.abc123{TEMP_SUFFIX}"
    others = [tmp_path / "tmpabc123", tmp_path / "notes.partial", tmp_path / ".semiseg-notes.txt"]
    for path in [stale, *others]:
        path.write_bytes(b"x")
    net = tiny_unet()
    trainer, _ = _bare_engine_saver(tmp_path, net, save_final=True, final_filename="model.pt")
    assert not stale.exists() and all(p.exists() for p in others)

    trainer.run()
    good = (tmp_path / "model.pt").read_bytes()
    seen: list[str] = []
    write = os.write

    def dying_write(fd: int, data) -> int:  # interrupted mid-write: the temp file exists, the target is untouched
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if not name.startswith(TEMP_PREFIX):
            return write(fd, data)
        seen.append(name)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", dying_write)
    trainer.state.max_epochs = 2
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert seen and seen[0].startswith(f"{TEMP_PREFIX}model.pt.{os.getpid()}.") and seen[0].endswith(TEMP_SUFFIX)
    assert (tmp_path / "model.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.pt", *(p.name for p in others)])


def test_the_clean_up_leaves_the_temp_files_of_live_processes_alone(tmp_path) -> None:
    """A starting run deletes what killed writers left, never a file another live run is writing."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as live:
        try:
            names = {
                "live": f"{TEMP_PREFIX}checkpoint.pt.{live.pid}.k2j4_x{TEMP_SUFFIX}",
                "this process": f"{TEMP_PREFIX}model.pt.{os.getpid()}.a8b9c0{TEMP_SUFFIX}",
                "dead": f"{TEMP_PREFIX}checkpoint.pt.{int(finished.stdout)}.zz0912{TEMP_SUFFIX}",
                "no pid": f"{TEMP_PREFIX}checkpoint.pt.k1ll3d{TEMP_SUFFIX}",
            }
            for name in names.values():
                (tmp_path / name).write_bytes(b"half a checkpoint")
            removed = clean_stale_temp_files(tmp_path)
            assert sorted(Path(p).name for p in removed) == sorted([names["dead"], names["no pid"]])
            assert (tmp_path / names["live"]).exists() and (tmp_path / names["this process"]).exists()
        finally:
            live.kill()


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_the_last_checkpoint_survives(
    tmp_path, monkeypatch
) -> None:
    net = tiny_unet()
    trainer, _ = _bare_engine_saver(tmp_path, net, save_interval=1, epoch_level=True,
                                    interval_filename="checkpoint.pt", n_saved=1)
    trainer.run()
    good = (tmp_path / "checkpoint.pt").read_bytes()
    write = os.write

    def full_disk(fd: int, data) -> int:
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f"{TEMP_PREFIX}checkpoint.pt."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    trainer.state.max_epochs = 2
    with pytest.raises(WriteError) as info:
        trainer.run()
    line = format_user_error(user_error(info.value)).splitlines()[0]
    assert f"cannot write {tmp_path / 'checkpoint.pt'}: No space left on device (ENOSPC)" in line
    assert "the earlier checkpoint.pt is unchanged" in line and "--resume true" in line
    assert info.value.errno == errno.ENOSPC
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left


def test_prepare_checkpoint_dir_refuses_to_replace_trained_weights(tmp_path) -> None:
    ckpt = tmp_path / "models"
    assert prepare_checkpoint_dir(ckpt) is False and ckpt.is_dir()  # a fresh folder is fine
    (ckpt / "model.pt").write_bytes(b"weights")
    with pytest.raises(FileExistsError) as info:
        prepare_checkpoint_dir(ckpt, resume="false", overwrite="false")
    message = str(info.value)
    assert str(ckpt / "model.pt") in message and "--resume true" in message and "--overwrite true" in message
    assert prepare_checkpoint_dir(ckpt, overwrite="true") is False
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt does not exist"):
        prepare_checkpoint_dir(ckpt, resume=True)
    (ckpt / "checkpoint.pt").write_bytes(b"state")
    assert prepare_checkpoint_dir(ckpt, resume="True") is True
    assert (ckpt / "model.pt").read_bytes() == b"weights"


def test_prepare_checkpoint_dir_reads_its_flags_with_the_settings_parser(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    assert prepare_checkpoint_dir(tmp_path, resume="no", overwrite="YES") is False  # "no" is not truthy here
    with pytest.raises(SettingError, match="setting overwrite must be true or false .* got 'maybe'"):
        prepare_checkpoint_dir(tmp_path, resume=False, overwrite="maybe")


@pytest.mark.parametrize("name", ["checkpoint.pt", "teacher.pt", "model_2.pt", "model_best.pt", "model.json"])
def test_a_fresh_run_refuses_where_any_file_of_an_earlier_run_is(tmp_path, name: str) -> None:
    """Not only model.pt: the resumable state of a killed run, a teacher or second student, the best weights."""
    (tmp_path / name).write_bytes(b"an earlier run's file")
    with pytest.raises(FileExistsError) as info:
        prepare_checkpoint_dir(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name} exists: ") and "--overwrite true to delete" in message
    assert ("--resume true to continue that run" in message) == (name == "checkpoint.pt")
    assert prepare_checkpoint_dir(tmp_path, overwrite=True) is False  # nothing is deleted here
    assert (tmp_path / name).read_bytes() == b"an earlier run's file"


def test_the_refusal_on_an_init_from_run_says_overwrite_trains_from_those_weights(tmp_path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    with pytest.raises(FileExistsError) as info:
        prepare_checkpoint_dir(tmp_path, init_from="bundles/supervised/models/model.pt")
    message = str(info.value)
    assert "and train again from --init_from bundles/supervised/models/model.pt (or choose" in (
        message) and "from scratch" not in message and "\n" not in message
    with pytest.raises(FileExistsError, match="and train from scratch"):
        prepare_checkpoint_dir(tmp_path, init_from=None)



# which files each way a run ends writes -----------------------------------------------------------------------------


class _Boom(RuntimeError):
    pass


class _FailingMethod(SupervisedMethod):
    """A non-finite loss, an exception or Ctrl-C in the forward pass of one iteration."""

    def __init__(self, at: int, failure: str) -> None:
        super().__init__()
        self.at, self.failure = at, failure

    def compute(self, engine, labelled, unlabelled):
        loss, out = super().compute(engine, labelled, unlabelled)
        if engine.state.iteration == self.at:
            if self.failure == "nan":
                return loss * math.nan, out
            raise KeyboardInterrupt if self.failure == "ctrl-c" else _Boom("forward failed")
        return loss, out


def _run_until_failure(loaders, tmp_path: Path, failure: str, at: int) -> tuple[torch.nn.Module, type]:
    torch.manual_seed(0)
    net = tiny_unet()
    method = _FailingMethod(at, failure) if failure in ("nan", "ctrl-c", "forward") else SupervisedMethod()
    trainer = SemiSupervisedTrainer("cpu", 3, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01), method,
                                    epoch_length=3, train_handlers=[StatsHandler(iteration_log=False)])

    def boom(engine):
        if engine.state.iteration == at:
            raise _Boom(f"handler failed at {failure}")

    if failure == "started":
        trainer.add_event_handler(Events.STARTED, boom)
    elif failure == "update":  # after the optimiser step, before the iteration's handlers are done
        trainer.add_event_handler(Events.ITERATION_COMPLETED, boom)
    elif failure == "epoch_end":  # validation, say: the iteration is complete
        trainer.add_event_handler(Events.EPOCH_COMPLETED, boom)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_final=True,
                          final_filename="model.pt").attach(trainer)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net, "trainer": trainer}, save_final=True,
                          final_filename="checkpoint.pt", save_interval=1, interval_filename="checkpoint.pt",
                          n_saved=1, save_on_error=True).attach(trainer)
    expected = {"ctrl-c": KeyboardInterrupt, "nan": FloatingPointError}.get(failure, _Boom)
    with pytest.raises(expected):
        trainer.run()
    return net, expected


@pytest.mark.parametrize(("failure", "at", "iteration"), [  # epochs of 3 iterations, checkpoint.pt saved after each
    ("started", 0, None),  # nothing trained: nothing written, not even an untrained checkpoint
    ("nan", 5, 4),  # the update of iteration 5 was refused: the state of iteration 4 is written
    ("ctrl-c", 5, 4),
    ("forward", 5, 4),
    ("nan", 4, 3),  # the state of iteration 3 is already in checkpoint.pt: left as it is
    ("update", 5, 3),  # stopped while iteration 5 was being applied: checkpoint.pt keeps the epoch-1 save
    ("epoch_end", 6, 6),  # iteration 6 was complete (the epoch-end save did not run): written from the error path
])
def test_a_run_stopped_by_an_error_never_writes_model_pt_and_writes_only_a_consistent_checkpoint(
    loaders, tmp_path, caplog, failure, at, iteration
) -> None:
    if failure == "started":
        (tmp_path / "checkpoint.pt").write_bytes(b"an earlier run's checkpoint")
    with caplog.at_level(logging.INFO):
        net, _ = _run_until_failure(loaders, tmp_path, failure, at)
    assert not (tmp_path / "model.pt").exists()
    if iteration is None:
        assert (tmp_path / "checkpoint.pt").read_bytes() == b"an earlier run's checkpoint"
        assert "before its first iteration" in caplog.text
        return
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == iteration and not non_finite_tensors(saved)
    if failure == "update":
        assert "during the update of iteration 5" in caplog.text
    elif at == 4:
        assert "no iteration completed since" in caplog.text
    else:
        assert f"wrote the state of the last completed iteration, {iteration}" in caplog.text
        assert states_equal(saved["model"], net.state_dict())  # the weights of that iteration: nothing was applied


def test_a_completed_run_writes_both_files_and_resume_from_an_error_checkpoint_continues(loaders, tmp_path) -> None:
    _run_until_failure(loaders, tmp_path, "nan", at=5)
    torch.manual_seed(0)
    net = tiny_unet()
    trainer = SemiSupervisedTrainer("cpu", 3, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    SupervisedMethod(), epoch_length=3)
    objects = {"model": net, "trainer": trainer}
    from monai.handlers import CheckpointLoader

    CheckpointLoader(load_path=str(tmp_path / "checkpoint.pt"), load_dict=objects).attach(trainer)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"model": net}, save_final=True,
                          final_filename="model.pt").attach(trainer)
    started: list[int] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(e.state.iteration))
    trainer.run()
    assert started == [5, 6, 7, 8, 9]  # the refused iteration 5 runs again, mid-epoch
    assert states_equal(torch.load(tmp_path / "model.pt", weights_only=True), net.state_dict())
