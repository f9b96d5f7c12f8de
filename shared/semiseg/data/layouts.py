"""The on-disk data set layouts semiseg reads without conversion, and their detection (docs/architecture.md §4).

- ``"msd"``: a Medical Segmentation Decathlon style ``dataset.json`` (NIfTI or NRRD volumes).
- ``"bpl"``: the BPL folders ``labelled/{imgs,lbls}``, ``unlabelled/imgs``, ``test/{imgs,lbls}`` (NIfTI or ``.npy``).
- ``"la_h5"``: the SSL4MIS / UA-MT Left Atrium layout, ``train.list`` and ``test.list`` naming ``.h5`` cases.

Each reader returns a :class:`LayoutCases`: the labelled cases in the layout's own order (from which
:func:`~semiseg.data.datalist.load_datalist` takes the labelled subset), the cases that are unlabelled in any case,
and the test cases. Paths are absolute; HDF5 items use ``"file.h5::dataset"``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import DataValidationError
from .readers import H5_SEPARATOR
from .volumes import VOLUME_SUFFIXES

__all__ = ["LAYOUTS", "LabelledCase", "LayoutCases", "detect_layout", "read_layout", "case_names", "natural_key"]

LAYOUTS: dict[str, str] = {"msd": "dataset.json", "bpl": "labelled/", "la_h5": "train.list"}
"""Each layout and the entry of the dataset directory that marks it, in detection order."""

LA_H5_CANDIDATES: tuple[str, ...] = (
    "{id}/mri_norm2.h5",
    "2018LA_Seg_Training Set/{id}/mri_norm2.h5",
    "{id}.h5",
    "data/{id}.h5",
)
"""Where the ``la_h5`` layout looks for a case listed in ``train.list``/``test.list``, relative to the data set."""


@dataclass(frozen=True)
class LabelledCase:
    """A case with an image and a label, that may become labelled or unlabelled.

    Attributes:
        names: the ids ``labelled_ids`` may use for this case (file name with and without suffix, or list id).
        image: absolute image path.
        label: absolute label path.
    """

    names: frozenset[str]
    image: str
    label: str


@dataclass
class LayoutCases:
    """What a layout reader found in a data set.

    Attributes:
        layout: the layout name.
        dataset_dir: the absolute data set directory.
        labelled: cases with labels, in the order the labelled subset is taken from.
        unlabelled: items ``{"image": path}`` that are unlabelled whatever the split.
        test: items ``{"image": path, "label": path}``.
        unlabelled_sources: where unlabelled data was looked for, for error messages.
    """

    layout: str
    dataset_dir: str
    labelled: list[LabelledCase] = field(default_factory=list)
    unlabelled: list[dict[str, str]] = field(default_factory=list)
    test: list[dict[str, str]] = field(default_factory=list)
    unlabelled_sources: str = ""


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders ``case_2`` before ``case_10``."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def case_names(path: str) -> frozenset[str]:
    """The ids a case may be selected by: its file name with and without the volume suffix.

    Args:
        path: an image path.

    Returns:
        e.g. ``{"la_003.nii.gz", "la_003"}``.
    """
    name = os.path.basename(path)
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return frozenset({name, name[: -len(suffix)]})
    return frozenset({name})


def detect_layout(dataset_dir: str) -> str:
    """Name the layout of ``dataset_dir`` from its marker entry (see :data:`LAYOUTS`).

    Args:
        dataset_dir: the data set directory.

    Returns:
        ``"msd"``, ``"bpl"`` or ``"la_h5"``.

    Raises:
        DataValidationError: if the directory does not exist or has none of the markers.
    """
    root = _existing_dir(dataset_dir)
    for layout, marker in LAYOUTS.items():
        if os.path.exists(os.path.join(root, marker)):
            return layout
    looked_for = ", ".join(f"{marker} (layout '{layout}')" for layout, marker in LAYOUTS.items())
    raise DataValidationError(f"cannot tell the layout of data set {root}: it has none of {looked_for}")


def read_layout(dataset_dir: str, layout: str = "auto") -> LayoutCases:
    """Read the cases of a data set in the given (or detected) layout.

    Args:
        dataset_dir: the data set directory.
        layout: ``"auto"`` or one of :data:`LAYOUTS`.

    Returns:
        The cases found, with absolute paths, in a deterministic order.

    Raises:
        DataValidationError: for an unknown layout, a missing marker, or any malformed entry.
    """
    readers: dict[str, Callable[[str], LayoutCases]] = {"msd": _read_msd, "bpl": _read_bpl, "la_h5": _read_la_h5}
    if layout not in ("auto", *readers):
        raise DataValidationError(
            f"unknown layout {layout!r} for data set {dataset_dir}; expected 'auto' or one of {', '.join(readers)}"
        )
    root = _existing_dir(dataset_dir)
    chosen = detect_layout(root) if layout == "auto" else layout
    marker = os.path.join(root, LAYOUTS[chosen])
    if not os.path.exists(marker):
        raise DataValidationError(f"data set {root} is not in layout '{chosen}': {marker} does not exist")
    return readers[chosen](root)


def _existing_dir(dataset_dir: str | os.PathLike[str]) -> str:
    root = os.path.abspath(os.path.expanduser(os.fspath(dataset_dir)))
    if not os.path.isdir(root):
        raise DataValidationError(f"data set directory {root} does not exist or is not a directory")
    return root


def _resolve(root: str, path: str) -> str:
    return os.path.normpath(os.path.join(root, os.path.expanduser(path)))


# ---------------------------------------------------------------------------------------------------------------- msd


def _read_msd(root: str) -> LayoutCases:
    """MSD ``dataset.json``: ``training``, optional ``unlabeled`` (or ``unlabelled``), ``test``, ``validation``.

    The training cases are the labelled candidates. Unlabelled: the ``unlabeled``/``unlabelled`` entries, or, when
    there is no such list, the ``test`` entries without a label (MSD's standard test set is a list of image paths).
    ``test`` entries with a label and every ``validation`` entry form the test set.
    """
    json_path = os.path.join(root, "dataset.json")
    try:
        with open(json_path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as err:
        raise DataValidationError(f"cannot read {json_path}: {err} ({type(err).__name__})") from err
    if not isinstance(spec, dict):
        raise DataValidationError(f"{json_path} must hold a JSON object, got {type(spec).__name__}")

    cases = LayoutCases(layout="msd", dataset_dir=root)
    problems: list[str] = []
    training = _msd_list(spec, "training", json_path, problems)
    if not training and not problems:
        problems.append(f"{json_path} has no 'training' cases")
    for index, entry in enumerate(training):
        pair = _msd_pair(root, entry, f"'training' entry {index} of {json_path}", problems)
        if pair is not None:
            cases.labelled.append(LabelledCase(case_names(pair["image"]), pair["image"], pair["label"]))

    unlabelled_keys = [key for key in ("unlabeled", "unlabelled") if key in spec]
    for key in unlabelled_keys:
        for index, entry in enumerate(_msd_list(spec, key, json_path, problems)):
            image = _msd_image(root, entry, f"'{key}' entry {index} of {json_path}", problems)
            if image is not None:
                cases.unlabelled.append({"image": image})
    for index, entry in enumerate(_msd_list(spec, "test", json_path, problems)):
        where = f"'test' entry {index} of {json_path}"
        if isinstance(entry, dict) and "label" in entry:
            pair = _msd_pair(root, entry, where, problems)
            if pair is not None:
                cases.test.append(pair)
        elif not unlabelled_keys:
            image = _msd_image(root, entry, where, problems)
            if image is not None:
                cases.unlabelled.append({"image": image})
    for index, entry in enumerate(_msd_list(spec, "validation", json_path, problems)):
        pair = _msd_pair(root, entry, f"'validation' entry {index} of {json_path}", problems)
        if pair is not None:
            cases.test.append(pair)
    if problems:
        raise DataValidationError(problems)

    source = f"its {' and '.join(repr(k) for k in unlabelled_keys)} list" if unlabelled_keys else "its 'test' images"
    cases.unlabelled_sources = f"{json_path} ({source}) and the training cases not selected as labelled"
    return cases


def _msd_list(spec: dict[str, Any], key: str, json_path: str, problems: list[str]) -> list[Any]:
    value = spec.get(key, [])
    if isinstance(value, list):
        return value
    problems.append(f"{json_path}: '{key}' must be a list, got {type(value).__name__}")
    return []


def _msd_image(root: str, entry: Any, where: str, problems: list[str]) -> str | None:
    image = entry.get("image") if isinstance(entry, dict) else entry
    if isinstance(image, str) and image:
        return _resolve(root, image)
    problems.append(f"{where} must be an image path or a dict with an 'image' path, got {entry!r}")
    return None


def _msd_pair(root: str, entry: Any, where: str, problems: list[str]) -> dict[str, str] | None:
    if not isinstance(entry, dict):
        problems.append(f"{where} must be a dict with 'image' and 'label' paths, got {entry!r}")
        return None
    image = _msd_image(root, entry, where, problems)
    label = entry.get("label")
    if image is None:
        return None
    if not isinstance(label, str) or not label:
        problems.append(f"{where} (image {image}) has no 'label' path")
        return None
    return {"image": image, "label": _resolve(root, label)}


# ---------------------------------------------------------------------------------------------------------------- bpl


def _read_bpl(root: str) -> LayoutCases:
    """BPL folders: ``labelled/{imgs,lbls}``, ``unlabelled/imgs``, ``test/{imgs,lbls}``; pairs by identical name."""
    cases = LayoutCases(layout="bpl", dataset_dir=root)
    problems: list[str] = []
    labelled = _bpl_pairs(root, "labelled", required=True, problems=problems)
    cases.labelled = [LabelledCase(case_names(p["image"]), p["image"], p["label"]) for p in labelled]
    unlabelled_dir = os.path.join(root, "unlabelled", "imgs")
    cases.unlabelled = [{"image": path} for path in _volumes_in(unlabelled_dir)]
    cases.test = _bpl_pairs(root, "test", required=False, problems=problems)
    if problems:
        raise DataValidationError(problems)
    cases.unlabelled_sources = f"{unlabelled_dir} and the labelled cases not selected as labelled"
    return cases


def _bpl_pairs(root: str, split: str, required: bool, problems: list[str]) -> list[dict[str, str]]:
    image_dir, label_dir = os.path.join(root, split, "imgs"), os.path.join(root, split, "lbls")
    if not os.path.isdir(image_dir) and not os.path.isdir(label_dir) and not required:
        return []
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            problems.append(f"data set {root} (layout 'bpl') has no folder {folder}")
    if problems:
        return []
    images = {os.path.basename(p): p for p in _volumes_in(image_dir)}
    labels = {os.path.basename(p): p for p in _volumes_in(label_dir)}
    if required and not images:
        problems.append(f"{image_dir} holds no volumes ({', '.join(VOLUME_SUFFIXES)})")
    for name in sorted(images.keys() - labels.keys(), key=natural_key):
        problems.append(f"image {images[name]} has no label: {os.path.join(label_dir, name)} does not exist")
    for name in sorted(labels.keys() - images.keys(), key=natural_key):
        problems.append(f"label {labels[name]} has no image: {os.path.join(image_dir, name)} does not exist")
    return [{"image": images[n], "label": labels[n]} for n in sorted(images.keys() & labels.keys(), key=natural_key)]


def _volumes_in(folder: str) -> list[str]:
    """The volume files of ``folder`` (by suffix, hidden files skipped), naturally sorted; none if it is missing."""
    if not os.path.isdir(folder):
        return []
    names = [
        name
        for name in os.listdir(folder)
        if not name.startswith(".")
        and name.lower().endswith(tuple(VOLUME_SUFFIXES))
        and os.path.isfile(os.path.join(folder, name))
    ]
    return [os.path.join(folder, name) for name in sorted(names, key=natural_key)]


# -------------------------------------------------------------------------------------------------------------- la_h5


def _read_la_h5(root: str) -> LayoutCases:
    """SSL4MIS / UA-MT ``train.list`` + ``test.list``: one case id a line, each case one ``.h5`` (image, label)."""
    cases = LayoutCases(layout="la_h5", dataset_dir=root)
    problems: list[str] = []
    for case_id, h5 in _la_h5_cases(root, "train.list", problems):
        cases.labelled.append(LabelledCase(frozenset({case_id}), *_h5_pair(h5)))
    if not cases.labelled and not problems:
        problems.append(f"{os.path.join(root, 'train.list')} lists no cases")
    test_list = os.path.join(root, "test.list")
    if os.path.exists(test_list):
        for _, h5 in _la_h5_cases(root, "test.list", problems):
            image, label = _h5_pair(h5)
            cases.test.append({"image": image, "label": label})
    if problems:
        raise DataValidationError(problems)
    cases.unlabelled_sources = f"the cases of {os.path.join(root, 'train.list')} not selected as labelled"
    return cases


def _h5_pair(h5: str) -> tuple[str, str]:
    return f"{h5}{H5_SEPARATOR}image", f"{h5}{H5_SEPARATOR}label"


def _la_h5_cases(root: str, list_name: str, problems: list[str]) -> list[tuple[str, str]]:
    list_path = os.path.join(root, list_name)
    try:
        with open(list_path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except OSError as err:
        problems.append(f"cannot read {list_path}: {err} ({type(err).__name__})")
        return []
    found: list[tuple[str, str]] = []
    for line in lines:
        if not line or line.startswith("#"):
            continue
        case_id = line[: -len(".h5")] if line.lower().endswith(".h5") else line
        candidates = [_resolve(root, pattern.format(id=case_id)) for pattern in LA_H5_CANDIDATES]
        h5 = next((c for c in candidates if os.path.isfile(c)), None)
        if h5 is None:
            problems.append(f"case '{case_id}' of {list_path} has no .h5 file: looked for {', '.join(candidates)}")
        else:
            found.append((case_id, h5))
    return found
