"""Checkpoints that never lose good weights: atomic, finite, written on an error only from a consistent state.

:class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` with three changes (docs/architecture.md §2,
"Checkpoints", and §6): every file is written to a temp file in the same folder and renamed over the old one; a
checkpoint whose tensors are not all finite is not written (the last good file stays, and the log says so); and
the final checkpoint is written when training stops on an error only where ``save_on_error`` is set and the
trainer's in-memory state is that of a completed iteration (MONAI writes it on any exception, which puts untrained
or half-updated weights in ``model.pt``). A write that fails (a full disk, a read-only folder) stops the run with
one line naming the file and the ``errno``; the previous file stays. :func:`prepare_checkpoint_dir` refuses a fresh
run where an earlier run's files (:data:`RUN_FILES`) are.
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointSaver

from semiseg.files import WriteError, process_alive, temp_owner, write_atomic

from ..settings import flag

__all__ = [
    "AtomicCheckpointSaver",
    "RUN_FILES",
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "clean_stale_temp_files",
    "existing_run_files",
    "non_finite_tensors",
    "prepare_checkpoint_dir",
]

TEMP_PREFIX = ".semiseg-"
TEMP_SUFFIX = ".partial"
"""A file being written is ``<dir>/.semiseg-<name>.<pid>.<random>.partial`` until it is renamed to ``<dir>/<name>``;
``<pid>`` is the writing process's id (files written before ids were recorded have none)."""

RUN_FILES = ("model.pt", "checkpoint.pt", "teacher.pt", "model_2.pt", "model_best.pt", "model.json")
"""Every file a training run writes into ``ckpt_dir``, the one list of them: the student's weights (``model.pt``),
the full training state (``checkpoint.pt``), the EMA teacher (``teacher.pt``: mean_teacher, uamt, ict), CPS's second
student (``model_2.pt``), the best-validation weights (``model_best.pt``) and the record written beside ``model.pt``
(``model.json``: :class:`~semiseg.handlers.TrainingRecordWriter`). A fresh run refuses where any of them exists;
``--overwrite true`` deletes them all when the new run starts, ``model.pt`` and ``model.json`` when it completes
(:class:`~semiseg.handlers.CheckpointDirGuard`). A bundle that writes a new
file adds its name here (``tests/handlers/test_checkpoint_dir.py`` checks every generated config against it)."""


def existing_run_files(ckpt_dir: str | os.PathLike, names: Iterable[str] = RUN_FILES) -> list[str]:
    """The files of :data:`RUN_FILES` (or ``names``) that exist in ``ckpt_dir``, in that order."""
    return [name for name in names if os.path.lexists(os.path.join(ckpt_dir, name))]


def prepare_checkpoint_dir(
    ckpt_dir: str | os.PathLike,
    resume: Any = False,
    overwrite: Any = False,
    final_filename: str = "model.pt",
    checkpoint_filename: str = "checkpoint.pt",
    run_files: Iterable[str] = RUN_FILES,
    init_from: Any = None,
) -> bool:
    """Create ``ckpt_dir`` and check that this training run may write into it.

    A fresh run (``resume`` false) refuses to start where a file of an earlier run (``run_files``: trained
    weights, or the ``checkpoint_filename`` of a run that was stopped) exists unless ``overwrite`` is true, so
    neither trained weights nor a resumable state are replaced by accident; ``resume`` true needs
    ``checkpoint_filename``. Nothing is deleted here: :class:`~semiseg.handlers.CheckpointDirGuard` deletes the
    earlier run's files when an ``overwrite`` run starts training.

    Args:
        ckpt_dir: the checkpoint folder (bundle id ``ckpt_dir``).
        resume: bundle setting ``resume`` (continue from ``checkpoint_filename``).
        overwrite: bundle setting ``overwrite`` (train from scratch over an earlier run's files).
        final_filename: the weights a completed run writes.
        checkpoint_filename: the full training state ``resume`` loads.
        run_files: every file a run writes into ``ckpt_dir`` (:data:`RUN_FILES`).
        init_from: bundle setting ``init_from`` (the weights a fresh run starts from), named in the refusal.

    Returns:
        ``resume`` as a bool (see :func:`semiseg.settings.flag`).

    Raises:
        FileExistsError: on a fresh run over an earlier run's files without ``overwrite``.
        FileNotFoundError: on ``resume`` without ``checkpoint_filename``.
        SettingError: if ``resume`` or ``overwrite`` is not a boolean.
    """
    resume, overwrite = flag(resume, "resume"), flag(overwrite, "overwrite")
    os.makedirs(ckpt_dir, exist_ok=True)
    final, checkpoint = Path(ckpt_dir) / final_filename, Path(ckpt_dir) / checkpoint_filename
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"--resume true, but {checkpoint} does not exist: there is nothing to resume from in ckpt_dir "
                f"{ckpt_dir}. Train without --resume (with --overwrite true if {final_filename} is there) or point "
                "--ckpt_dir at the folder of the run to continue."
            )
        return resume
    found = existing_run_files(ckpt_dir, [final_filename, checkpoint_filename, *run_files])
    if not found or overwrite:
        return resume
    names = ", ".join(dict.fromkeys(found))
    start = "from scratch" if init_from in (None, "") else f"again from --init_from {init_from}"
    deletes = f"--overwrite true to delete the earlier run's files ({names}) and train {start}"
    if final.exists():
        resume_hint = (f"--resume true to continue training from {checkpoint}" if checkpoint.is_file()
                       else f"--resume true needs {checkpoint}, which is not there")
        raise FileExistsError(
            f"{final} exists: this training run would replace those weights. Pass {resume_hint}, or {deletes} (or "
            "choose another --ckpt_dir)."
        )
    if checkpoint.is_file():
        raise FileExistsError(
            f"{checkpoint} exists: an earlier run stopped before it finished and this fresh training run would "
            f"replace its state. Pass --resume true to continue that run, or {deletes} (or choose another "
            "--ckpt_dir)."
        )
    raise FileExistsError(
        f"{Path(ckpt_dir) / found[0]} exists: ckpt_dir holds an earlier run's files ({names}) that this training "
        f"run would replace. Pass {deletes} (or choose another --ckpt_dir)."
    )


def clean_stale_temp_files(dirname: str | os.PathLike) -> list[str]:
    """Delete the temp files that checkpoint writes killed part-way left in ``dirname`` (only this module's pattern).

    A temp file whose name carries the id of a live process (:func:`semiseg.files.temp_owner`) is being written and
    is left alone, whichever run owns it; one without an id (written before ids were recorded) is deleted. Call it
    on the process that writes (rank 0), holding the folder's lock (:class:`~semiseg.handlers.CheckpointDirGuard`).

    Args:
        dirname: the checkpoint folder.

    Returns:
        The deleted paths.
    """
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(str(dirname)), f"{TEMP_PREFIX}*{TEMP_SUFFIX}"))):
        owner = temp_owner(os.path.basename(path), TEMP_SUFFIX)
        if owner is not None and process_alive(owner):
            continue
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _tensors(obj: Any, path: str) -> list[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        return [(path, obj)]
    if isinstance(obj, Mapping):
        return [item for k, v in obj.items() for item in _tensors(v, f"{path}[{k!r}]" if path else str(k))]
    if isinstance(obj, (list, tuple)):
        return [item for i, value in enumerate(obj) for item in _tensors(value, f"{path}[{i}]")]
    return []


def abs_total(tensors: Iterable[torch.Tensor], device: torch.device | str) -> torch.Tensor:
    """Sum over ``tensors`` of their L1 norms (the sum of every ``|x|``), as a float scalar on ``device``, without a
    host sync: the trainer's finite check of the gradients, once per iteration.

    One fused ``torch._foreach_norm`` (L1 norm) per device. The result is finite exactly when every element of every
    tensor is, unless the sum of magnitudes exceeds float32's largest value (3.4e38), which only gradients already
    unusable reach (their step is then refused as non-finite, as it should be). The max norm never overflows, but on
    CPU ``_foreach_norm`` computes it 60-270x slower than the L1 norm (29 ms against 0.47 ms for the demo UNet's 0.6 M
    gradients, one thread; docs/benchmarks.md); on a GPU both are one fused kernel.

    Args:
        tensors: the tensors to check (empty tensors are skipped).
        device: where the total lives (e.g. the loss's device, to add the loss to it).

    Returns:
        The total, 0 when there is nothing to check.
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor.numel():
            by_device.setdefault(tensor.device, []).append(tensor.detach())
    total = torch.zeros((), dtype=torch.float32, device=device)
    for group in by_device.values():
        total = total + torch.stack(torch._foreach_norm(group, 1)).float().sum().to(total.device)
    return total


def non_finite_tensors(checkpoint: Any) -> list[str]:
    """The entries of a (nested) checkpoint whose floating-point tensors hold NaN or inf.

    One fused ``torch._foreach_norm`` (L1 norm, :func:`abs_total`) per device, so a finite checkpoint costs one sync
    per device; only when that total is not finite (a non-finite tensor, or magnitudes summing past float32's range)
    is every tensor checked on its own, so the answer is exact either way.

    Args:
        checkpoint: a state dict or a mapping of state dicts.

    Returns:
        Paths such as ``"model['conv.weight']"``, empty when every tensor is finite.
    """
    tensors = [(path, t) for path, t in _tensors(checkpoint, "") if t.is_floating_point() and t.numel()]
    if bool(torch.isfinite(abs_total((t for _, t in tensors), "cpu"))):
        return []
    return [path for path, tensor in tensors if not bool(torch.isfinite(tensor).all())]


class _AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver``, atomic (temp file + ``os.replace``), with a fixed file name and a finite check.

    With a fixed name, ``remove`` is a no-op: the next save replaces the file atomically, so there is never a
    moment without a checkpoint on disk (MONAI's saver deletes the old file first). A checkpoint with a non-finite
    tensor is not written; ``report`` is told why.
    """

    def __init__(self, dirname: str, filename: str | None, report: Callable[[str], None]) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename
        self.report = report
        self.writes = 0

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        path = self.dirname / (self.filename or filename)
        bad = non_finite_tensors(checkpoint)
        if bad:
            kept = f"keeping the last good {path}" if path.exists() else f"{path} has no earlier version"
            self.report(
                f"not writing {path}: {len(bad)} tensor(s) hold NaN or inf (first {', '.join(bad[:3])}); {kept}."
            )
            return
        super().__call__(checkpoint=checkpoint, filename=self.filename or filename, metadata=metadata)
        self.writes += 1

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        """Ignite's atomic write (serialised in memory, then :func:`semiseg.files.write_atomic`), with a temp name
        :func:`clean_stale_temp_files` recognises; a failed write names the file and the ``errno``."""
        buffer = io.BytesIO()
        func(checkpoint, buffer, **self.kwargs)
        try:
            write_atomic(path, buffer.getbuffer(), f"{TEMP_PREFIX}{path.name}.", TEMP_SUFFIX)
        except WriteError as err:
            raise WriteError(
                err.errno,
                f"{err} Free space on that disk (or make {self.dirname} writable) and continue with --resume true "
                "from the last checkpoint written.",
            ) from err.__cause__
        os.chmod(path, os.stat(path).st_mode | 0o044)  # group/others may read, as Ignite does

    def remove(self, filename: str) -> None:
        if self.filename is None and os.path.exists(os.path.join(self.dirname, filename)):
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` that never replaces a good file by a bad one.

    - Every file is written to ``.semiseg-<name>.<random>.partial`` in the same folder and renamed over the old
      one (MONAI writes in place, so a crash during ``torch.save`` leaves a truncated file); stale temp files of
      this pattern, left by a process killed while writing, are deleted when the saver is attached (rank 0).
    - A checkpoint whose floating-point tensors are not all finite is not written: the last good file stays and
      the log says which tensors (:func:`non_finite_tensors`).
    - The final checkpoint (``save_final``) is written when training completes. When it stops on an error
      (an exception, ``KeyboardInterrupt``, a non-finite loss) it is written only with ``save_on_error`` and only
      from a consistent state: the engine must say which iteration its in-memory state belongs to
      (:attr:`semiseg.engines.SemiSupervisedTrainer.last_good_iteration`), that iteration must be newer than the
      run's start and than this saver's last file, and the file then holds that iteration
      (:meth:`~semiseg.engines.SemiSupervisedTrainer.last_good_state`). The bundles set it for ``checkpoint.pt``
      (so ``--resume true`` continues) and never for ``model.pt``, which only a completed run writes. The error
      is re-raised after the save; this handler runs before the other ``EXCEPTION_RAISED`` handlers (which
      re-raise and would skip it).
    - Under DDP only rank 0 writes (Ignite's ``DiskSaver``).

    ``interval_filename`` gives the interval checkpoint a fixed name (e.g. ``checkpoint.pt``, the file ``resume``
    loads); the default keeps MONAI's ``..._epoch=N.pt`` naming.

    Args:
        interval_filename: fixed file name for interval checkpoints (use with ``n_saved=1``).
        save_on_error: write the final checkpoint when training stops on an error (see above).
        kwargs: ``monai.handlers.CheckpointSaver`` arguments.

    Attributes:
        last_saved_iteration: the engine iteration of the last file this saver wrote in this process, or None.
    """

    def __init__(self, interval_filename: str | None = None, save_on_error: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.save_on_error = bool(save_on_error)
        self.last_saved_iteration: int | None = None
        self._handled_error: BaseException | None = None
        fixed = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attr, filename in fixed.items():
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename, self._report_refusal)

    def _report_refusal(self, message: str) -> None:
        self.logger.error(message)

    def _final_path(self) -> str:
        return os.path.join(self.save_dir, self._final_filename or "checkpoint_final_iteration=<N>.pt")

    def _save(self, checkpoint: Checkpoint | None, engine: Engine) -> bool:
        """Run one of MONAI's ``Checkpoint`` objects; True if a file was written."""
        if checkpoint is None:
            return False
        handler = checkpoint.save_handler
        before = getattr(handler, "writes", 0)
        checkpoint(engine)
        written = getattr(handler, "writes", 1) > before
        if written:
            self.last_saved_iteration = engine.state.iteration
        return written

    def attach(self, engine: Engine) -> None:
        """MONAI's events, except that the error path is registered first and only with ``save_on_error``."""
        if self._name is None:
            self.logger = engine.logger
        if idist.get_rank() == 0:
            for path in clean_stale_temp_files(self.save_dir) if os.path.isdir(self.save_dir) else []:
                self.logger.warning(f"deleted {path}, left by a checkpoint write that was interrupted.")
        if self._final_checkpoint is not None:
            engine.add_event_handler(Events.COMPLETED, self.completed)
            if self.save_on_error:
                engine.add_event_handler(Events.EXCEPTION_RAISED, self.exception_raised)
                # Ignite stops at the first EXCEPTION_RAISED handler that re-raises (StatsHandler does): go first.
                handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
                handlers.insert(0, handlers.pop())
        if self._key_metric_checkpoint is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.metrics_completed)
        if self._interval_checkpoint is not None:
            event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED
            engine.add_event_handler(event(every=self.save_interval), self.interval_completed)

    def _save_final(self, engine: Engine) -> bool:
        if self._final_filename is None:
            self._delete_previous_final_ckpt()  # MONAI keeps one numbered final file
        elif self._final_checkpoint is not None:
            self._final_checkpoint.reset()  # a fixed name is replaced, whatever iteration an earlier run saved
        return self._save(self._final_checkpoint, engine)

    def completed(self, engine: Engine) -> None:
        """Write the final checkpoint at the end of a completed run."""
        if self._save_final(engine):
            self.logger.info(f"Train completed, saved final checkpoint: {self._final_path()}")

    def interval_completed(self, engine: Engine) -> None:
        """Write the interval checkpoint (every ``save_interval`` epochs or iterations)."""
        if self._save(self._interval_checkpoint, engine):
            unit = "epoch" if self.epoch_level else "iteration"
            self.logger.info(f"Saved checkpoint at {unit}: {getattr(engine.state, unit)}")

    def exception_raised(self, engine: Engine, e: BaseException) -> None:
        """Training stopped on ``e``: write the final checkpoint from the last consistent state (``save_on_error``),
        say what was and was not written, and re-raise ``e``."""
        if self.save_on_error and self._final_checkpoint is not None and e is not self._handled_error:
            self._handled_error = e  # Ignite fires EXCEPTION_RAISED twice for an error inside an iteration
            try:
                self._save_after_error(engine, e)
            except Exception as save_error:  # never hide the error that stopped training
                self.logger.error(f"could not write {self._final_path()} after the error: {save_error!r}")
        raise e

    def _save_after_error(self, engine: Engine, e: BaseException) -> None:
        path, what = self._final_path(), type(e).__name__
        saved = self.last_saved_iteration
        last = "" if saved is None else f" (it keeps iteration {saved}, saved by this run)"
        start, good = getattr(engine, "start_iteration", None), getattr(engine, "last_good_iteration", None)
        if not hasattr(engine, "last_good_state"):
            self.logger.error(f"training stopped ({what}); {type(engine).__name__} cannot say whether its state is "
                              f"consistent, so {path} was not written{last}.")
        elif start is None:
            self.logger.error(f"training stopped before its first iteration ({what}); {path} was left as it is.")
        elif good is None:
            self.logger.error(
                f"training stopped during the update of iteration {engine.state.iteration} ({what}); the in-memory "
                f"state is partly updated, so {path} was not written{last}."
            )
        elif good <= start or (self.last_saved_iteration is not None and good <= self.last_saved_iteration):
            self.logger.error(f"training stopped at iteration {engine.state.iteration} ({what}); no iteration "
                              f"completed since {path} was last written or loaded, so it was left as it is.")
        else:
            with engine.last_good_state():  # type: ignore[attr-defined]
                written = self._save_final(engine)
            if written:
                self.logger.error(
                    f"training stopped at iteration {engine.state.iteration} ({what}); wrote the state of the last "
                    f"completed iteration, {good}, to {path}: continue with --resume true. Final weights (model.pt) "
                    "are written only when training completes."
                )
