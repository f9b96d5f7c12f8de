"""The images an ``inference.json`` run reads, found and checked before any output is written, and their output names.

``inference_images(@dataset_dir, ...)`` is the inference config's data list. It accepts a single NIfTI image, a
folder of NIfTI images (searched with its subfolders), or a data set folder: the images its ``dataset.json`` lists
under ``test`` (MSD layout), else those under ``imagesTs/``; and loads every image once to check it: not empty,
readable and complete (a truncated ``.nii.gz``, or one whose gzip CRC-32 fails, is caught as in training:
:mod:`semiseg.data.files`), a 3-D volume, or 4-D with as many channels as the network takes, and
without NaN or infinite voxels. A missing or empty folder, a link to a file that does not exist, two inputs that
would write the same output file, and every bad image fail with a
:class:`~semiseg.data.errors.DataValidationError` naming the folder or files, the problem and what to do, instead of
an all-background segmentation (NaN voxels), an exit status 0 with nothing written (no images), a result written
over another (two ``case`` images), or a shape error deep in the network that names no file (2-D or 2-channel
images). An image whose voxel spacing differs from the training spacing recorded beside the weights
(:mod:`semiseg.inference.spacing`) by more than a factor of 2 is segmented with a one-line warning. See
docs/architecture.md §5.

Output names (:func:`output_names`): a case's outputs are named after its file, ``<name>_seg.nii.gz`` for
``<name>.nii.gz``, flat in ``output_dir`` where that name is unique; inputs whose names clash (``siteA/p1.nii.gz``
and ``siteB/p1.nii.gz``) keep their folders relative to the folder the clashing inputs share
(``siteA/p1_seg.nii.gz``); two files that differ only in their suffix in one folder (``case.nii`` and
``case.nii.gz``) are refused. :func:`case_output_name` is the ``output_name_formatter`` of the config's
``SaveImaged`` transforms.

NaN voxels fail by default; ``nonfinite="replace"`` accepts them, and :class:`ReplaceNonFinited` in the
preprocessing then replaces them with the image's smallest finite value (the background of an MR or CT scan),
before intensity scaling.

Images are read twice (here and by the preprocessing): the check is a pass over the inputs before the first output
is written, so a bad file in the middle of a folder leaves no partial results.

This module imports only torch, MONAI, numpy and the standard library (and semiseg modules relatively), so it ships
in a bundle zip and runs with MONAI alone (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform

from ..data.errors import DataValidationError
from ..data.files import empty_file_problem, gunzip_checked
from .spacing import SPACING_FACTOR, format_spacing, ras_spacing, read_training_spacing, spacing_mismatch

__all__ = [
    "IMAGE_SUFFIXES",
    "LABEL_FOLDERS",
    "NONFINITE_POLICIES",
    "ReplaceNonFinited",
    "case_output_name",
    "find_images",
    "inference_images",
    "output_name",
    "output_names",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii")
"""The image files inference reads (MONAI's NIfTI reader, nibabel, is part of "MONAI alone")."""

NONFINITE_POLICIES = ("error", "replace")
TEST_FOLDER = "imagesTs"
DATASET_JSON = "dataset.json"
LABEL_FOLDERS = ("labelsTr", "labelsTs", "labels", "lbls")
"""Subfolders holding label maps in the layouts semiseg reads (MSD, BPL): a folder search skips them, and says so."""

_OUTPUT_NAMES: dict[str, str] = {}
"""Input path -> output name of the inputs :func:`inference_images` checked in this process
(:func:`case_output_name` reads it)."""


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _test_list(root: str) -> list[str] | None:
    """The images ``<root>/dataset.json`` lists under ``test`` (MSD: paths, or ``{"image": path}`` items), resolved
    against ``root``; None when there is no ``dataset.json`` or it has no ``test`` list."""
    spec_path = os.path.join(root, DATASET_JSON)
    if not os.path.isfile(spec_path):
        return None
    try:
        with open(spec_path, encoding="utf-8") as f:
            spec = json.load(f)
    except (OSError, ValueError) as err:
        raise DataValidationError(f"cannot read {spec_path}: {_reason(err)}; fix the file or remove it") from err
    entries = spec.get("test") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    paths: list[str] = []
    problems: list[str] = []
    for index, entry in enumerate(entries):
        image = entry.get("image") if isinstance(entry, dict) else entry
        if not isinstance(image, str):
            problems.append(f"{spec_path}: test[{index}] is {entry!r}, not an image path or {{'image': path}}")
            continue
        path = os.path.normpath(os.path.join(root, image))
        if os.path.islink(path) and not os.path.exists(path):
            problems.append(f"{spec_path}: test[{index}] names {path}, a link to {os.readlink(path)}, which does "
                            "not exist")
        elif not os.path.isfile(path):
            problems.append(f"{spec_path}: test[{index}] names {path}, which does not exist")
        paths.append(path)
    if problems:
        raise DataValidationError(problems)
    return paths


def _walk(folder: str) -> tuple[list[str], list[str], list[str], list[str], int]:
    """Images under ``folder`` and its subfolders (hidden ones and :data:`LABEL_FOLDERS` skipped), in natural order
    of their paths; links to image files that do not exist; the label folders skipped; the other files; the number
    of subfolders searched."""
    images: list[str] = []
    dangling: list[str] = []
    skipped: list[str] = []
    others: list[str] = []
    seen: set[str] = set()
    labels = {name.lower() for name in LABEL_FOLDERS}
    problems: list[str] = []

    def unreadable(err: OSError) -> None:
        problems.append(f"cannot read inference input folder {err.filename}: {_reason(err)}")

    for current, dirs, files in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        kept = []
        for name in dirs:
            if name.startswith("."):
                continue
            if name.lower() in labels:
                skipped.append(os.path.join(current, name))
                continue
            kept.append(name)
        dirs[:] = kept
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(current, name)
            if _is_image(name) and os.path.isfile(path):
                images.append(path)
            elif _is_image(name) and os.path.islink(path) and not os.path.exists(path):
                dangling.append(path)
            else:
                others.append(path)
    if problems:
        raise DataValidationError(problems)

    def order(path: str) -> tuple[Any, ...]:  # in each folder its files first, then its subfolders
        parts = os.path.relpath(path, folder).split(os.sep)
        return (*((1, _natural_key(part)) for part in parts[:-1]), (0, _natural_key(parts[-1])))

    images.sort(key=order)
    others.sort(key=order)
    return images, dangling, sorted(skipped), others, len(seen) - 1


def find_images(dataset_dir: str | os.PathLike[str]) -> list[str]:
    """The NIfTI images inference runs on.

    In this order: ``dataset_dir`` itself when it is a ``.nii``/``.nii.gz`` file; the ``test`` list of
    ``<dataset_dir>/dataset.json`` (MSD layout); the images in ``<dataset_dir>/imagesTs`` and its subfolders when
    it exists; else those in ``dataset_dir`` and its subfolders. Hidden files and folders and the label folders of
    :data:`LABEL_FOLDERS` are skipped (the log names the label folders skipped); images are in natural order of
    their paths.

    Args:
        dataset_dir: one image, a folder of images, or a data set folder (``dataset.json`` or ``imagesTs/``).

    Returns:
        Absolute paths.

    Raises:
        DataValidationError: if the path does not exist, is a file that is not NIfTI, a ``dataset.json`` ``test``
            entry names a missing file, an image file in the folders is a link to a file that does not exist, or
            the folders hold no ``.nii``/``.nii.gz`` file.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(dataset_dir)))
    if os.path.isfile(root) and _is_image(root):
        return [root]
    if not os.path.isdir(root):
        if os.path.islink(root) and not os.path.exists(root):
            what = f"input {root} is a link to {os.readlink(root)}, which does not exist"
        elif os.path.exists(root):
            what = f"input {root} is a file, not a NIfTI image or a folder"
        else:
            what = f"input folder {root} does not exist"
        raise DataValidationError(
            f"inference {what}: pass --dataset_dir with a NIfTI image ({', '.join(IMAGE_SUFFIXES)}), "
            f"a folder of them, or a data set folder holding them under {TEST_FOLDER}/ or listing them in "
            f"{DATASET_JSON} 'test'"
        )
    listed = _test_list(root)
    if listed is not None:
        return listed
    test_dir = os.path.join(root, TEST_FOLDER)
    folder = test_dir if os.path.isdir(test_dir) else root
    images, dangling, skipped, others, subfolders = _walk(folder)
    if dangling:
        raise DataValidationError([
            f"inference input {path} is a link to {os.readlink(path)}, which does not exist: fix or remove the link "
            "(nothing was written)" for path in dangling
        ])
    if skipped:
        logger.info(f"inference: skipped the label folders {', '.join(skipped)} (label maps, not images).")
    if images:
        return images
    looked = f"{folder}" if folder == root else f"{folder} (the {TEST_FOLDER}/ of {root})"
    if others:
        where = f" in it and its {subfolders} subfolders" if subfolders else ""
        found = f"it holds {len(others)} other files{where}, e.g. {os.path.relpath(others[0], folder)}"
    elif subfolders:
        found = f"it holds {subfolders} subfolders, without any file"
    else:
        found = "it is empty"
    if skipped:
        found += f"; the label folders {', '.join(os.path.relpath(p, folder) for p in skipped)} were skipped"
    raise DataValidationError(
        f"no NIfTI images ({', '.join(IMAGE_SUFFIXES)}) in inference input folder {looked}: {found}; pass "
        "--dataset_dir with a NIfTI image or a folder of them (nothing was written)"
    )


def _stem(path: str) -> str:
    """The file name without its suffix, as MONAI's ``SaveImage`` takes it (``a.b.nii.gz`` -> ``a.b``)."""
    name, ext = os.path.splitext(os.path.basename(path))
    if ext == ".gz":
        name = os.path.splitext(name)[0]
    return name


def output_names(paths: Sequence[str]) -> dict[str, str]:
    """The name each input's outputs are written under (``<name>_seg.nii.gz``), relative to ``output_dir``.

    A name is the file name without its suffix where that is unique among ``paths`` (compared ignoring case, as a
    case-insensitive file system would); inputs whose names clash keep their path relative to the folder the
    clashing inputs share (``siteA/p1`` and ``siteB/p1``).

    Args:
        paths: the input images (absolute paths).

    Returns:
        ``{path: name}``; a name may hold ``/`` (a subfolder of ``output_dir``).

    Raises:
        DataValidationError: naming both files, for two inputs that would still write the same file (``case.nii``
            and ``case.nii.gz`` in one folder).
    """
    stems = {path: _stem(path) for path in paths}
    groups: dict[str, list[str]] = {}
    for path, stem in stems.items():
        groups.setdefault(stem.casefold(), []).append(path)
    names = dict(stems)
    for clashing in (group for group in groups.values() if len(group) > 1):
        shared = os.path.commonpath([os.path.dirname(p) for p in clashing])
        for path in clashing:
            names[path] = os.path.relpath(os.path.join(os.path.dirname(path), stems[path]), shared).replace(os.sep, "/")
    seen: dict[str, str] = {}
    problems = []
    for path, name in names.items():
        other = seen.setdefault(name.casefold(), path)
        if other != path:
            problems.append(
                f"inference inputs {other} and {path} would both be written as {name}_seg.nii.gz (the same name "
                "without its suffix): rename or move one of them (nothing was written)"
            )
    if problems:
        raise DataValidationError(problems)
    return names


def output_name(source: str) -> str:
    """The :func:`output_names` name of an input :func:`inference_images` checked in this process; for any other
    input (MONAI Label's), its file name without suffix, as MONAI names outputs."""
    return _OUTPUT_NAMES.get(source) or _OUTPUT_NAMES.get(os.path.abspath(source)) or _stem(source) or "case"


def case_output_name(metadict: Mapping[str, Any] | None, saver: Any = None) -> dict[str, Any]:
    """``output_name_formatter`` for MONAI's ``SaveImaged`` in ``inference.json``: the case's :func:`output_names`.

    Use it with ``data_root_dir: "/"``: a name with a folder (``siteA/p1``) is returned as ``/siteA/p1.nii.gz``,
    which ``SaveImaged`` writes under ``<output_dir>/siteA/``; a flat name as ``p1.nii.gz`` (no folder). An input
    that :func:`inference_images` did not check (MONAI Label's) is named after its file, flat, as MONAI does.

    Args:
        metadict: the image's metadata (``filename_or_obj``, ``patch_index``).
        saver: the ``SaveImage`` transform (unused).

    Returns:
        ``{"subject": ..., "idx": patch_index}`` for ``FolderLayout.filename``.
    """
    meta = dict(metadict or {})
    name = output_name(str(meta.get("filename_or_obj", "")))
    subject = f"/{name}.nii.gz" if "/" in name else f"{name}.nii.gz"
    return {"subject": subject, "idx": meta.get("patch_index")}


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{lines[0] if lines else 'unreadable'} ({type(err).__name__})"


def _image_problem(
    path: str, in_channels: int, nonfinite: str, loader: LoadImage
) -> tuple[str | None, tuple[float, float, float] | None]:
    """What is wrong with one image (None when nothing), and its RAS voxel spacing when it has one."""
    empty = empty_file_problem(path, "image")
    if empty is not None:
        return empty, None
    if path.lower().endswith(".gz"):
        try:
            gunzip_checked(path, "image")  # nibabel never checks the gzip CRC: a damaged stream would load
        except DataValidationError as err:
            return err.problems[0], None
    try:
        data = loader(path)
        array = np.asarray(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    except Exception as err:  # any reader error becomes one message naming the file
        cause = err.__cause__ or err
        return (
            f"cannot read image {path}: {_reason(cause)}; the file is truncated, corrupt or not NIfTI - "
            "re-export or re-download it"
        ), None
    return _array_problem(path, array, in_channels, nonfinite), _spacing_of(data)


def _array_problem(path: str, array: np.ndarray, in_channels: int, nonfinite: str) -> str | None:
    shape = tuple(int(s) for s in array.shape)
    expected = f"a 3-D volume (H, W, D) or (H, W, D, C) with C = in_channels = {in_channels}"
    if len(shape) not in (3, 4):
        return f"image {path} has shape {shape}, a {len(shape)}-D array; expected {expected}"
    channels = 1 if len(shape) == 3 else shape[3]
    if channels != in_channels:
        return (
            f"image {path} has {channels} channel{'s' if channels != 1 else ''} (shape {shape}) but the network "
            f"takes in_channels = {in_channels}; expected {expected}"
        )
    if array.size == 0:
        return f"image {path} is empty (shape {shape})"
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        bad = int(array.size - np.count_nonzero(finite))
        if bad and (nonfinite == "error" or bad == array.size):
            nan = int(np.count_nonzero(np.isnan(array)))
            fix = (
                "it has no finite voxel at all"
                if bad == array.size
                else "fix the file, or pass --nonfinite_voxels replace to replace them with the image's minimum "
                "finite value"
            )
            return (
                f"image {path} has {nan} NaN and {bad - nan} infinite voxels (of {array.size}), which would give "
                f"an all-background segmentation; {fix}"
            )
    return None


def _spacing_of(data: Any) -> tuple[float, float, float] | None:
    affine = getattr(data, "affine", None)
    if affine is None and hasattr(data, "meta"):
        affine = data.meta.get("affine")
    if affine is None:
        return None
    array = np.asarray(affine.detach().cpu().numpy() if isinstance(affine, torch.Tensor) else affine)
    return ras_spacing(array) if array.shape[-2:] in ((4, 4), (3, 3)) else None


def inference_images(
    dataset_dir: str | os.PathLike[str],
    in_channels: int = 1,
    nonfinite: str = "error",
    training_record: str | os.PathLike[str] | None = None,
    spacing_factor: float = SPACING_FACTOR,
) -> list[dict[str, str]]:
    """Find the inference images (:func:`find_images`) and check each one, before anything is written.

    Args:
        dataset_dir: a NIfTI image, a folder of them, or a data set folder (:func:`find_images`).
        in_channels: the channels the network takes; a 3-D image has one, a 4-D image ``shape[3]``.
        nonfinite: ``"error"`` (default) fails on NaN or infinite voxels; ``"replace"`` lets them through, for
            :class:`ReplaceNonFinited` to replace (an image without any finite voxel still fails).
        training_record: the ``model.json`` written beside the weights (:mod:`semiseg.inference.spacing`); an
            image whose spacing differs from its training spacing by more than ``spacing_factor`` on an axis gets a
            one-line warning in the log. None, or no such file: nothing is compared.
        spacing_factor: see ``training_record``.

    Returns:
        The data list, ``[{"image": path}, ...]``.

    Raises:
        DataValidationError: naming the folder (missing, no images), dangling links, two inputs that would write the
            same output, or every bad image and its problem (unreadable or truncated, not 3-D, wrong number of
            channels, non-finite voxels).
        ValueError: for a ``nonfinite`` other than ``"error"`` / ``"replace"``.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_voxels must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    paths = find_images(dataset_dir)
    names = output_names(paths)
    training = read_training_spacing(training_record)
    loader = LoadImage(image_only=True)
    problems = []
    for path in paths:
        problem, spacing = _image_problem(path, in_channels, nonfinite, loader)
        if problem is not None:
            problems.append(problem)
        elif training is not None and spacing is not None and spacing_mismatch(spacing, training, spacing_factor):
            logger.warning(
                f"image {path} has voxel spacing {format_spacing(spacing)}, more than {spacing_factor:g}x off the "
                f"training spacing {format_spacing(training)} ({training_record}): its segmentation may be poor; "
                "resample it to the training spacing."
            )
    if problems:
        raise DataValidationError(problems)
    _OUTPUT_NAMES.update(names)
    return [{"image": path} for path in paths]


class ReplaceNonFinited(MapTransform):
    """Replace NaN and infinite voxels with the image's smallest finite value (only when ``enabled``).

    Used in ``inference.json``'s preprocessing right after loading, for ``nonfinite_voxels = "replace"``; a no-op
    on images without such voxels, so the preprocessing stays equal to training's ``eval_transforms``.

    Args:
        keys: the image keys.
        enabled: whether to replace (False: pass the data through untouched).
        allow_missing_keys: as for MONAI's ``MapTransform``.
    """

    def __init__(self, keys: KeysCollection, enabled: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = enabled

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if not self.enabled:
            return d
        for key in self.key_iterator(d):
            image = d[key]
            finite = torch.isfinite(image)
            if bool(finite.all()):
                continue
            fill = image[finite].min() if bool(finite.any()) else torch.zeros((), dtype=image.dtype)
            d[key] = torch.where(finite, image, fill.to(image.dtype))
        return d
