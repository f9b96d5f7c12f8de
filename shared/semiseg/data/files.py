"""Checks on a volume file's bytes that every reader needs: not empty, and a ``.gz`` stream that is intact.

nibabel reads a ``.nii.gz`` only up to its last voxel and never checks the gzip CRC-32 and length trailer, so a stream
damaged in the middle (one flipped byte of a copy) loads as silently wrong voxels; an empty file fails deep inside
nibabel with ``Binary block is wrong size (WrapStructError)``, naming no file. Training (:mod:`semiseg.data.volumes`)
and inference (:mod:`semiseg.inference.checks`) both check their inputs here first.

This module imports only the standard library (and :mod:`semiseg.data.errors` relatively), so it ships inside a
bundle zip (``scripts/package_bundles.py``) and inference checks its inputs the same way with MONAI alone.
"""

from __future__ import annotations

import gzip
import os
import zlib

from .errors import DataValidationError

__all__ = ["empty_file_problem", "gunzip_checked", "require_nonempty"]


def empty_file_problem(path: str | os.PathLike[str], role: str) -> str | None:
    """The problem line for an empty (0-byte) file, or None when the file has bytes (or cannot be stat-ed).

    Args:
        path: the file.
        role: what it is, for the message (``"image"``, ``"label"``, ``"weights file"``).

    Returns:
        e.g. ``"image /data/a.nii.gz is empty (0 bytes): copy or export it again"``, or None.
    """
    try:
        size = os.path.getsize(path)
    except OSError:  # missing or unreadable: the caller names that
        return None
    if size:
        return None
    return f"{role} {os.fspath(path)} is empty (0 bytes): an interrupted copy or download? Copy or export it again"


def require_nonempty(path: str | os.PathLike[str], role: str) -> None:
    """Raise :class:`DataValidationError` for an empty (0-byte) file (see :func:`empty_file_problem`)."""
    problem = empty_file_problem(path, role)
    if problem is not None:
        raise DataValidationError(problem)


def _reason(err: BaseException) -> str:
    text = str(err).strip() or "unreadable"
    return f"{text} ({type(err).__name__})"


def gunzip_checked(path: str | os.PathLike[str], role: str) -> bytes:
    """Decompress a whole gzip file, checking every member's CRC-32 and length; name the file if it is damaged.

    Args:
        path: a ``.gz`` file.
        role: what it is, for the message (``"image"``, ``"label"``).

    Returns:
        The decompressed bytes.

    Raises:
        DataValidationError: for an empty file, a stream that ends early (truncated), or one that does not
            decompress to the data it was written with (a CRC or length mismatch, a corrupt block).
    """
    require_nonempty(path, role)
    with open(path, "rb") as f:
        compressed = f.read()
    try:
        return gzip.decompress(compressed)
    except EOFError as err:
        message = (
            f"cannot read {role} {os.fspath(path)}: the file is truncated (its gzip stream ends early: "
            f"{_reason(err)}); copy or export it again"
        )
        raise DataValidationError(message) from err
    except (OSError, zlib.error) as err:
        message = (
            f"cannot read {role} {os.fspath(path)}: the file is corrupt (its gzip stream does not decompress to the "
            f"data it was written with: {_reason(err)}); copy or export it again"
        )
        raise DataValidationError(message) from err
