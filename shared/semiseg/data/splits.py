"""Keep the labelled, unlabelled, validation and test lists disjoint: no file, and no image content, in two of them.

A case that is in two lists leaks: a test image that is also an unlabelled training image inflates the test score of
every semi-supervised method, a validation case that is also trained on makes model selection pick the overfitted
weights. :func:`find_shared_files` compares the lists by file (after resolving links and ``..``; an HDF5 item
``"file.h5::key"`` is its file) and, for images, by content (SHA-256 of the file bytes), so a copy of a test image
under another name is caught too. Labels are compared by file only: two cases may legitimately have identical label
files (e.g. both empty).

Hashing stays cheap: identical bytes need identical sizes, so only images whose file size equals that of an image
in another list are hashed, each file once.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import DataValidationError
from .volumes import volume_file

__all__ = ["SPLITS", "check_disjoint", "find_repeated", "find_shared_files"]

SPLITS: tuple[str, ...] = ("labelled", "unlabelled", "validation", "test")
"""The lists :func:`~semiseg.data.datalist.load_datalist` returns, which must not share a case."""

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Entry:
    split: str
    role: str
    path: str

    def describe(self) -> str:
        return f"{self.split} {self.role} {self.path}"


def check_disjoint(datalist: Mapping[str, Sequence[Mapping[str, str]]], compare_contents: bool = True) -> None:
    """Raise if two lists of ``datalist`` share a file or an image's content (see :func:`find_shared_files`).

    Args:
        datalist: list name -> items with ``"image"`` (and ``"label"``) paths.
        compare_contents: also compare image files by content hash.

    Raises:
        DataValidationError: one problem per shared file or content, naming the files and their lists.
    """
    problems = find_shared_files(datalist, compare_contents=compare_contents)
    if problems:
        raise DataValidationError(problems)


def find_shared_files(datalist: Mapping[str, Sequence[Mapping[str, str]]], compare_contents: bool = True) -> list[str]:
    """The files, and image contents, that occur in more than one list of ``datalist``.

    Within one list a file may occur more than once (an SSL4MIS ``.h5`` holds a case's image and label). Files that
    do not exist are skipped here; the file checks report them.

    Args:
        datalist: list name -> items with ``"image"`` (and ``"label"``) paths; items without paths are skipped.
        compare_contents: also compare image files by content (SHA-256), hashing only images whose size matches an
            image of another list.

    Returns:
        One line per shared file or content (empty when the lists are disjoint).
    """
    by_file: dict[str, list[_Entry]] = defaultdict(list)
    for split, items in datalist.items():
        for item in items:
            if not isinstance(item, Mapping):
                continue
            for role in ("image", "label"):
                path = item.get(role)
                if isinstance(path, (str, os.PathLike)):
                    by_file[os.path.realpath(volume_file(os.fspath(path)))].append(_Entry(split, role, os.fspath(path)))

    problems: list[str] = []
    reported: set[str] = set()
    for real, entries in by_file.items():
        if len({e.split for e in entries}) > 1:
            reported.add(real)
            listed = "; ".join(e.describe() for e in _first_per_split(entries))
            problems.append(
                f"file {real} is in more than one list: {listed}. Each case must be in exactly one of "
                f"{', '.join(SPLITS)}: remove it from all but one (the data set's lists or folders, or the "
                "labelled/validation split)"
            )
    if compare_contents:
        problems.extend(_same_contents(by_file, reported))
    return problems


def _case_key(path: str) -> str:
    """One volume, however its path is written: the resolved file, plus ``::dataset`` for an HDF5 item."""
    file = volume_file(path)
    return os.path.realpath(file) + path[len(file):]


def find_repeated(images: Sequence[str], where: str, consequence: str) -> list[str]:
    """The images listed more than once in one list of a data set (the same file, however its path is written).

    A training entry listed twice would be trained on twice and, taking a labelled place, push another labelled
    case into the unlabelled set without a word; a repeated test case would count twice in the mean.

    Args:
        images: the list's image paths, in the data set's order.
        where: the list, for the message (``"'training' of /data/dataset.json"``).
        consequence: what the repetition would do, for the message.

    Returns:
        One line per repeated image, naming it and its positions (counting from 0).
    """
    positions: dict[str, list[int]] = defaultdict(list)
    for index, path in enumerate(images):
        positions[_case_key(path)].append(index)
    problems = []
    for found in positions.values():
        if len(found) > 1:
            path = images[found[0]]
            problems.append(
                f"{where} lists image {path} {len(found)} times (entries {', '.join(map(str, found))}, counting from "
                f"0): {consequence}; remove the repeated entries (nothing was run)"
            )
    return problems


def _first_per_split(entries: list[_Entry]) -> list[_Entry]:
    seen: dict[str, _Entry] = {}
    for entry in entries:
        seen.setdefault(entry.split, entry)
    return list(seen.values())


def _same_contents(by_file: Mapping[str, list[_Entry]], reported: set[str]) -> list[str]:
    """Images of different lists with identical bytes; only files whose size matches another list's are hashed."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for real, entries in by_file.items():
        if real in reported or not any(e.role == "image" for e in entries):
            continue
        try:
            by_size[os.path.getsize(real)].append(real)
        except OSError:  # missing or unreadable: the file checks name it
            continue
    by_digest: dict[str, list[str]] = defaultdict(list)
    for files in by_size.values():
        if len({e.split for f in files for e in by_file[f]}) < 2:
            continue
        for real in files:
            digest = _sha256(real)
            if digest is not None:
                by_digest[digest].append(real)
    problems: list[str] = []
    for digest, files in by_digest.items():
        entries = [e for f in files for e in by_file[f] if e.role == "image"]
        if len({e.split for e in entries}) < 2:
            continue
        listed = "; ".join(e.describe() for e in _first_per_split(entries))
        problems.append(
            f"images with identical contents (sha256 {digest[:16]}...) are in more than one list: {listed}. The same "
            f"scan must be in exactly one of {', '.join(SPLITS)}: remove the copy from all lists but one"
        )
    return problems


def _sha256(path: str) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    except OSError:  # unreadable: the file checks name it
        return None
    return digest.hexdigest()
