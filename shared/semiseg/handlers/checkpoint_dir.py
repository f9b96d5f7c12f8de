"""One training run's claim on its ``ckpt_dir``: an exclusive lock, the fresh/resume/overwrite rules, writable output
folders, and the earlier run's files deleted by ``--overwrite true`` only once the new run starts training (its
``model.pt`` only once the new one replaces it).

Two runs writing one ``ckpt_dir`` replace each other's ``checkpoint.pt`` every epoch, and the one that finishes last
replaces the other's ``model.pt``. :class:`CheckpointDirGuard` stops the second: ``prepare()``, the first thing
``train.json``'s ``initialize`` does after checking the settings (before any data is read), takes an exclusive
``fcntl.flock`` on ``<ckpt_dir>/.semiseg-run.lock`` and writes its process id and host into it; a second run
finds the lock taken and stops in one line naming that pid. The operating system releases the lock when the
process ends, however it ends, so a run killed with SIGKILL leaves no stale lock; the guard releases it itself when
the trainer's run ends, completed or failed (:attr:`~semiseg.keys.SSLRunEvents.RUN_ENDED`), so a notebook can train
again in the same folder. Under ``torchrun`` only rank 0 takes the lock (it is the only rank that writes).

A workflow of this process whose run never started (it failed while its data was read, say) still holds its lock;
a later workflow of the same process on the same folder takes it over. Two workflows running at once in one process
(threads) are not told apart.

See docs/architecture.md §2, "Checkpoints".
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch.distributed as dist
from ignite.engine import Engine, Events

from semiseg.errors import SemisegError
from semiseg.files import WriteError, check_writable, describe_os_error
from semiseg.handlers.checkpoint import RUN_FILES, existing_run_files, prepare_checkpoint_dir
from semiseg.keys import SSLRunEvents
from semiseg.settings import flag

try:
    import fcntl
except ImportError:  # Windows: no flock
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "SERVED_FILES", "CheckpointDirGuard", "CheckpointDirInUse"]

LOCK_FILE = ".semiseg-run.lock"
"""The lock file in ``ckpt_dir``; it stays after a run (deleting a lock file others may wait on is a race) and
holds the last holder's ``<pid> <host>``."""

SERVED_FILES = ("model.pt", "model.json")
"""The weights a server loads and their record: with ``--overwrite true`` they stay until the new run replaces them
when it completes, so MONAI Label (which reads ``models/model.pt``) serves the earlier weights while it retrains."""

logger = logging.getLogger(__name__)

_HELD: dict[str, CheckpointDirGuard] = {}
"""Lock file (real path) -> the guard of this process that holds it."""


class CheckpointDirInUse(SemisegError):
    """Another run holds the lock of the ``ckpt_dir`` this run would write."""


def _identity(path: str) -> tuple[int, int] | None:
    """``(inode, mtime)`` of a file, None when it does not exist: a file written over (renamed onto) changes it."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class CheckpointDirGuard:
    """What a training run does to its ``ckpt_dir`` before and after it trains.

    ``prepare()`` (in ``initialize``, before any data is read), on rank 0: checks that ``ckpt_dir`` and every
    folder of ``output_dirs`` can be written (:func:`semiseg.files.check_writable`: a read-only folder or a full
    disk stops the run here, naming the folder and the ``errno``), takes the folder's lock (a second run refuses
    naming the holder's pid), then applies :func:`~semiseg.handlers.checkpoint.prepare_checkpoint_dir` (all ranks):
    a fresh run refuses where any file of :data:`~semiseg.handlers.checkpoint.RUN_FILES` exists unless
    ``overwrite``; ``resume`` needs ``checkpoint.pt``. ``attach(trainer)``: with ``overwrite``, the earlier run's
    files are deleted when the trainer starts (``STARTED``: after the data is loaded and the network and checkpoint
    loader are built, so a run that fails before that leaves them), except ``served_files`` (``model.pt`` and its
    ``model.json``), which the run replaces when it completes, and which are deleted then if it does not write them
    itself; the lock is released when the run ends.

    Args:
        ckpt_dir: the checkpoint folder (``@ckpt_dir``).
        resume: bundle setting ``resume``.
        overwrite: bundle setting ``overwrite``.
        init_from: bundle setting ``init_from`` (the weights a fresh run starts from), named in a refusal.
        output_dirs: other folders the run writes (``["@output_dir"]``: TensorBoard logs); checked, created.
        run_files: the files a run writes into ``ckpt_dir`` (:data:`~semiseg.handlers.checkpoint.RUN_FILES`).
        served_files: the files of ``run_files`` kept until the run completes (:data:`SERVED_FILES`).
        lock_filename: the lock file's name in ``ckpt_dir``.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike[str],
        resume: Any = False,
        overwrite: Any = False,
        output_dirs: Sequence[str | os.PathLike[str]] = (),
        init_from: Any = None,
        run_files: Iterable[str] = RUN_FILES,
        served_files: Iterable[str] = SERVED_FILES,
        lock_filename: str = LOCK_FILE,
    ) -> None:
        self.ckpt_dir = os.path.abspath(os.fspath(ckpt_dir))
        self.resume = flag(resume, "resume")
        self.overwrite = flag(overwrite, "overwrite")
        self.output_dirs = [os.fspath(d) for d in output_dirs]
        self.init_from = init_from
        self.run_files = tuple(run_files)
        self.served_files = tuple(served_files)
        self._earlier: dict[str, tuple[int, int]] = {}  # served files of the earlier run: name -> (inode, mtime)
        self.lock_path = os.path.join(self.ckpt_dir, lock_filename)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this guard holds the lock."""
        return self._fd is not None

    def prepare(self) -> bool:
        """Check the folders, take the lock (rank 0) and apply the fresh/resume/overwrite rules.

        Returns:
            ``resume`` as a bool (a value for the ``initialize`` list).

        Raises:
            WriteError: ``ckpt_dir`` or an output folder cannot be written (names it and the ``errno``).
            CheckpointDirInUse: another run holds the lock (names its pid).
            FileExistsError: a fresh run over an earlier run's files without ``overwrite``.
            FileNotFoundError: ``resume`` without ``checkpoint.pt``.
        """
        if _rank() == 0:
            check_writable(self.ckpt_dir, "ckpt_dir")
            for folder in self.output_dirs:
                check_writable(folder, "output_dir")
            self.acquire()
        try:
            return prepare_checkpoint_dir(self.ckpt_dir, self.resume, self.overwrite, run_files=self.run_files,
                                          init_from=self.init_from)
        except BaseException:
            self.release()
            raise

    def acquire(self) -> None:
        """Take the exclusive lock on ``ckpt_dir`` (non-blocking).

        Raises:
            CheckpointDirInUse: naming the pid and host that hold it.
            WriteError: the lock file cannot be created.
        """
        if self._fd is not None:
            return
        key = os.path.realpath(self.lock_path)
        earlier = _HELD.get(key)
        if earlier is not None and earlier is not self and earlier._fd is not None:
            # a workflow of this process whose run never ended (it failed before training): take its lock over
            self._fd, earlier._fd = earlier._fd, None
            _HELD[key] = self
            logger.info(f"{self.lock_path}: taking over the lock of an earlier run in this process.")
            return
        if fcntl is None:
            logger.warning(f"no file locking on this platform: another run could write {self.ckpt_dir} too.")
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise WriteError(err.errno, f"ckpt_dir {self.ckpt_dir} is not writable: cannot create its lock file "
                                        f"{self.lock_path}: {describe_os_error(err)} (nothing was run).") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP: no locks here
                os.close(fd)
                logger.warning(f"cannot lock {self.lock_path} ({describe_os_error(err)}): the file system of ckpt_dir "
                               "has no locks, so another run could write into it too.")
                return
            holder = self._holder(fd)
            os.close(fd)
            raise CheckpointDirInUse(
                f"ckpt_dir {self.ckpt_dir} is in use by another training run ({holder}, holding {self.lock_path}): "
                "two runs in one folder would replace each other's checkpoints. Wait for that run to end, stop it, "
                "or pass --ckpt_dir with another folder (nothing was run)."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        _HELD[key] = self

    @staticmethod
    def _holder(fd: int, attempts: int = 20) -> str:
        """``"pid N on host H"`` from the lock file (the holder writes it right after locking: wait for it)."""
        text = ""
        for _ in range(attempts):
            text = os.pread(fd, 512, 0).decode(errors="replace").strip()
            if text:
                break
            time.sleep(0.05)
        pid, _, host = text.partition(" ")
        if not pid:
            return "pid unknown"
        return f"pid {pid}" + (f" on host {host}" if host and host != socket.gethostname() else "")

    def release(self, engine: Engine | None = None) -> None:
        """Release the lock (nothing when it is not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        key = os.path.realpath(self.lock_path)
        if _HELD.get(key) is self:
            del _HELD[key]
        try:
            os.close(fd)  # closing the only descriptor releases the flock
        except OSError:
            pass

    def _delete(self, names: Iterable[str]) -> list[str]:
        removed = []
        for name in names:
            path = os.path.join(self.ckpt_dir, name)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise WriteError(err.errno, f"--overwrite true: cannot delete the earlier run's {path}: "
                                            f"{describe_os_error(err)}; delete it yourself or pass --ckpt_dir with "
                                            "another folder.") from err
            removed.append(path)
        if removed:
            logger.info(f"--overwrite true: deleted the earlier run's {', '.join(removed)}.")
        return removed

    def remove_earlier_run(self, engine: Engine | None = None) -> list[str]:
        """With ``overwrite`` (and not ``resume``), delete the earlier run's files in ``ckpt_dir`` (rank 0), but the
        ``served_files``, which :meth:`remove_unreplaced` deletes at the end if this run does not replace them.

        Returns:
            The deleted paths.
        """
        if not self.overwrite or self.resume or _rank() != 0:
            return []
        found = existing_run_files(self.ckpt_dir, self.run_files)
        served = [name for name in found if name in self.served_files]
        self._earlier = {name: _identity(os.path.join(self.ckpt_dir, name)) for name in served}
        return self._delete(name for name in found if name not in self.served_files)

    def remove_unreplaced(self, engine: Engine | None = None) -> list[str]:
        """At ``COMPLETED``: delete the earlier run's ``served_files`` that this run did not write over."""
        earlier, self._earlier = self._earlier, {}
        return self._delete(name for name, seen in earlier.items()
                            if _identity(os.path.join(self.ckpt_dir, name)) == seen)

    def attach(self, engine: Engine) -> None:
        """Delete the earlier run's files at ``STARTED`` (``overwrite``; its ``served_files`` at ``COMPLETED`` if
        not replaced) and release the lock when the run ends.

        Args:
            engine: the trainer. Without :class:`~semiseg.keys.SSLRunEvents` (not a
                :class:`~semiseg.engines.SemiSupervisedTrainer`) the lock is released at ``COMPLETED``, and on an
                error when the process ends.
        """
        if not engine.has_event_handler(self.remove_earlier_run, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.remove_earlier_run)
        if not engine.has_event_handler(self.remove_unreplaced, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.remove_unreplaced)
        event = SSLRunEvents.RUN_ENDED if SSLRunEvents.RUN_ENDED in engine._allowed_events else Events.COMPLETED
        if not engine.has_event_handler(self.release, event):
            engine.add_event_handler(event, self.release)
