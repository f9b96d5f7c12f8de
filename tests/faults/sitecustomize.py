"""Disk faults for subprocess tests: a read-only folder, a disk that fills up (tests/test_bad_inputs.py).

As root a ``chmod``-ed folder stays writable, and filling a real disk is slow and dangerous, so a test puts this
folder first on ``PYTHONPATH`` of the process it starts (Python imports ``sitecustomize`` at start-up) and sets:

- ``SEMISEG_FAULT_READONLY``: folders (``os.pathsep``-separated); creating, writing, renaming or deleting anything
  in them raises ``OSError(EROFS)``, as on a read-only mount; reading works.
- ``SEMISEG_FAULT_FULL``: a folder; writing a file in it whose name matches ``SEMISEG_FAULT_FULL_MATCH`` (``fnmatch``,
  default ``*``) raises ``OSError(ENOSPC)``, except the first ``SEMISEG_FAULT_FULL_AFTER`` such files (default 0),
  which are written normally. From the first failure on the disk is full: every write in the folder fails.

Without these variables nothing is changed.
"""

from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import os

_READONLY = [os.path.abspath(p) for p in os.environ.get("SEMISEG_FAULT_READONLY", "").split(os.pathsep) if p]
_FULL = os.path.abspath(os.environ["SEMISEG_FAULT_FULL"]) if os.environ.get("SEMISEG_FAULT_FULL") else None
_FULL_MATCH = os.environ.get("SEMISEG_FAULT_FULL_MATCH", "*")
_FULL_AFTER = int(os.environ.get("SEMISEG_FAULT_FULL_AFTER", "0"))
_written: list[str] = []  # files allowed to be written on the full disk
_filled: list[bool] = []  # non-empty once a write failed: the disk is full from then on


def _inside(path: object, folders: list[str]) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
        return False
    full = os.path.abspath(os.fsdecode(os.fspath(path)))
    return any(full == f or full.startswith(f + os.sep) for f in folders)


def _readonly(path: object) -> None:
    if _inside(path, _READONLY):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(os.fspath(path)))  # type: ignore[arg-type]


def _full(path: str) -> None:
    if _FULL is None or not _inside(path, [_FULL]):
        return
    if not _filled:
        if not fnmatch.fnmatch(os.path.basename(path), _FULL_MATCH) or path in _written:
            return
        if len(_written) < _FULL_AFTER:
            _written.append(path)
            return
        _filled.append(True)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _install() -> None:
    real_open, real_os_open, real_write = builtins.open, os.open, os.write

    def open_(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202
        if any(c in str(mode) for c in "wax+"):
            _readonly(file)
            if isinstance(file, (str, os.PathLike)):
                _full(os.path.abspath(os.fspath(file)))
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):  # noqa: ANN001, ANN202
        if flags & _WRITE_FLAGS:
            _readonly(path)
        return real_os_open(path, flags, *args, **kwargs)

    def os_write(fd, data):  # noqa: ANN001, ANN202
        if _FULL is not None:
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if path:
                _full(path)
        return real_write(fd, data)

    def guarded(name: str, arity: int = 1) -> None:
        real = getattr(os, name)

        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            for path in args[:arity]:
                _readonly(path)
            return real(*args, **kwargs)

        setattr(os, name, wrapper)

    builtins.open = open_
    io.open = open_
    os.open = os_open
    os.write = os_write
    for name in ("mkdir", "remove", "unlink", "rmdir", "chmod"):
        guarded(name)
    for name in ("replace", "rename"):
        guarded(name, 2)


if _READONLY or _FULL is not None:
    _install()
