"""Writing into output folders so that a failure is one line naming the file and the cause (``ENOSPC``, ``EROFS``).

:func:`check_writable` is what a run calls on each folder it writes into (``ckpt_dir``, ``output_dir``) before any
work: it creates and deletes a one-byte file there, so a read-only folder or a full disk stops the run at once,
naming the folder and the ``errno``, instead of after an epoch of training or halfway through an inference.
:func:`write_atomic` writes a file the way checkpoints and records are written: to a temporary file in the same
folder, synced, then renamed over the old file, so a failure (a full disk) leaves the previous file as it was and
the error names the file and the ``errno``. Temporary names carry the writer's process id
(``<prefix><pid>.<random><suffix>``), so a clean-up can tell a live writer's file from one a killed process left
(:func:`temp_owner`, :func:`process_alive`).

This module imports only the standard library (and :mod:`semiseg.errors` relatively), so it ships in a bundle zip
and works when inference runs with MONAI alone (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import errno
import os
import re
import tempfile

from .errors import SemisegError

__all__ = [
    "WriteError",
    "check_writable",
    "describe_os_error",
    "errno_name",
    "new_file_mode",
    "process_alive",
    "temp_owner",
    "write_atomic",
    "write_problem",
]

_PROBE_PREFIX = ".semiseg-write-test-"


class WriteError(SemisegError, OSError):
    """A folder or file a run must write cannot be written (read-only file system, full disk, no permission).

    An ``OSError`` whose ``errno`` is the cause's, with a one-line message naming the folder or file, the ``errno``
    and what to do.

    Args:
        code: the ``errno`` of the failure.
        message: the message.
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = code
        self.strerror = os.strerror(code) if code is not None else None

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def errno_name(code: int | None) -> str:
    """The symbolic name of an ``errno`` (``28`` -> ``"ENOSPC"``), or ``"errno N"`` when it has none."""
    if code is None:
        return "no errno"
    return errno.errorcode.get(code, f"errno {code}")


def describe_os_error(err: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the error's text and symbolic ``errno``."""
    text = err.strerror or (os.strerror(err.errno) if err.errno is not None else str(err))
    return f"{text} ({errno_name(err.errno)})"


def _nearest_existing(path: str) -> str:
    current = os.path.abspath(path)
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def write_problem(folder: str | os.PathLike[str]) -> OSError | None:
    """Why a file cannot be written into ``folder`` (an existing folder), or None: writes, syncs and deletes a
    one-byte file there.

    Args:
        folder: the folder.

    Returns:
        The ``OSError`` of the probe (``EROFS``, ``ENOSPC``, ``EACCES``, ...), or None when it could be written.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=os.fspath(folder))
        try:
            os.write(fd, b"0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as err:
        return err
    return None


def check_writable(folder: str | os.PathLike[str], what: str, create: bool = True) -> str:
    """Fail in one line unless files can be written into ``folder``.

    Creates ``folder`` (``create``), then writes, syncs and deletes a one-byte file in it (:func:`write_problem`).
    Without ``create`` a missing folder is left missing and the probe is written into its nearest existing parent,
    so checking an output folder changes nothing in it.

    Args:
        folder: the folder.
        what: its setting's name for the message (``"ckpt_dir"``, ``"output_dir"``).
        create: create ``folder`` (and its parents) when missing.

    Returns:
        The folder's absolute path.

    Raises:
        WriteError: naming the folder, the ``errno`` (``EROFS``, ``ENOSPC``, ``EACCES``, ...) and what to do.
    """
    path = os.path.abspath(os.fspath(folder))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WriteError(errno.ENOTDIR, f"{what} {path} is a file, not a folder: pass --{what} with a folder "
                                        "(nothing was run).")
    target = path
    try:
        if create:
            os.makedirs(path, exist_ok=True)
        target = path if os.path.isdir(path) else _nearest_existing(path)
        if not os.path.isdir(target):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), target)
        problem = write_problem(target)
    except OSError as err:
        problem = err
    if problem is None:
        return path
    where = "" if target == path else f" (it does not exist and cannot be created in {target})"
    raise WriteError(
        problem.errno,
        f"{what} {path} is not writable{where}: {describe_os_error(problem)}; make it writable, free space on its "
        f"disk, or pass --{what} with another folder (nothing was run).",
    ) from problem


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(
    path: str | os.PathLike[str], data: bytes | bytearray | memoryview, temp_prefix: str, temp_suffix: str = ""
) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, synced, then renamed over ``path``.

    The temporary file is ``<folder>/<temp_prefix><pid>.<random><temp_suffix>`` (see :func:`temp_owner`). On any
    failure it is deleted and ``path`` is left as it was.

    Args:
        path: the file to write.
        data: its bytes.
        temp_prefix: start of the temporary file's name.
        temp_suffix: end of the temporary file's name.

    Raises:
        WriteError: naming ``path`` and the ``errno`` when the write fails (``ENOSPC``, ``EROFS``, ...).
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{temp_prefix}{os.getpid()}.", suffix=temp_suffix, dir=folder)
        try:
            view = memoryview(data).cast("B")
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, new_file_mode())  # mkstemp's 0600 would hide the file from the group (results are shared)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        tmp = None
    except OSError as err:
        kept = f"the earlier {os.path.basename(target)} is unchanged" if os.path.exists(target) else "nothing written"
        raise WriteError(err.errno, f"cannot write {os.path.abspath(target)}: {describe_os_error(err)}; {kept}.") \
            from err
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def temp_owner(name: str, temp_suffix: str = "") -> int | None:
    """The process id in a temporary file name written by :func:`write_atomic` (``<prefix><pid>.<random><suffix>``,
    the prefix ending in ``.`` or ``-``), or None for a name without one (written before ids were recorded).

    Args:
        name: the file name (no folder).
        temp_suffix: the suffix the writer used.

    Returns:
        The writer's pid, or None.
    """
    if temp_suffix:
        if not name.endswith(temp_suffix):
            return None
        name = name[: -len(temp_suffix)]
    head = name.rpartition(".")[0]
    found = re.search(r"[.-](\d+)$", head)
    return int(found.group(1)) if found else None


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (``kill(pid, 0)``; a zombie counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
