"""The images an ``inference.json`` run reads, found and checked before any output is written.

``inference_images(@dataset_dir, ...)`` is the inference config's data list. It accepts a single NIfTI image, a
folder of NIfTI images, or a data set folder: the images its ``dataset.json`` lists under ``test`` (MSD layout),
else those under ``imagesTs/``; and loads every image once to check it: not empty, readable and complete (a
truncated ``.nii.gz``, or one whose gzip CRC-32 fails, is caught as in training: :mod:`semiseg.data.files`), a 3-D
volume, or 4-D with as many channels as the network takes, and without NaN or infinite voxels. A missing or empty
folder and every bad image fail with a :class:`~semiseg.data.errors.DataValidationError` naming the folder or file,
the problem and what to do, instead of an all-background segmentation (NaN voxels), an exit status 0 with nothing
written (no images), silently wrong voxels (a damaged gzip stream), or a shape error deep in the network that names
no file (2-D or 2-channel images). See docs/architecture.md §5.

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
import os
import re
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import LoadImage, MapTransform

from ..data.errors import DataValidationError
from ..data.files import empty_file_problem, gunzip_checked

__all__ = ["IMAGE_SUFFIXES", "NONFINITE_POLICIES", "ReplaceNonFinited", "find_images", "inference_images"]

IMAGE_SUFFIXES = (".nii.gz", ".nii")
"""The image files inference reads (MONAI's NIfTI reader, nibabel, is part of "MONAI alone")."""

NONFINITE_POLICIES = ("error", "replace")
TEST_FOLDER = "imagesTs"
DATASET_JSON = "dataset.json"


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
        if not os.path.isfile(path):
            problems.append(f"{spec_path}: test[{index}] names {path}, which does not exist")
        paths.append(path)
    if problems:
        raise DataValidationError(problems)
    return paths


def find_images(dataset_dir: str | os.PathLike[str]) -> list[str]:
    """The NIfTI images inference runs on.

    In this order: ``dataset_dir`` itself when it is a ``.nii``/``.nii.gz`` file; the ``test`` list of
    ``<dataset_dir>/dataset.json`` (MSD layout); the images in ``<dataset_dir>/imagesTs`` when it exists; else those
    in ``dataset_dir`` itself (hidden files skipped), in natural file-name order.

    Args:
        dataset_dir: one image, a folder of images, or a data set folder (``dataset.json`` or ``imagesTs/``).

    Returns:
        Absolute paths.

    Raises:
        DataValidationError: if the path does not exist, is a file that is not NIfTI, a ``dataset.json`` ``test``
            entry names a missing file, or the folder holds no ``.nii``/``.nii.gz`` file.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(dataset_dir)))
    if os.path.isfile(root) and _is_image(root):
        return [root]
    if not os.path.isdir(root):
        if os.path.exists(root):
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
    names = sorted((n for n in os.listdir(folder) if not n.startswith(".")), key=_natural_key)
    images = [n for n in names if _is_image(n) and os.path.isfile(os.path.join(folder, n))]
    if images:
        return [os.path.join(folder, n) for n in images]
    looked = f"{folder}" if folder == root else f"{folder} (the {TEST_FOLDER}/ of {root})"
    others = [n for n in names if os.path.isfile(os.path.join(folder, n))]
    found = f"it holds {len(others)} other files, e.g. {others[0]}" if others else "it is empty"
    raise DataValidationError(
        f"no NIfTI images ({', '.join(IMAGE_SUFFIXES)}) in inference input folder {looked}: {found}; pass "
        "--dataset_dir with a NIfTI image or a folder of them (nothing was written)"
    )


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{lines[0] if lines else 'unreadable'} ({type(err).__name__})"


def _image_problem(path: str, in_channels: int, nonfinite: str, loader: LoadImage) -> str | None:
    empty = empty_file_problem(path, "image")
    if empty is not None:
        return empty
    if path.lower().endswith(".gz"):
        try:
            gunzip_checked(path, "image")  # nibabel never checks the gzip CRC: a damaged stream would load
        except DataValidationError as err:
            return err.problems[0]
    try:
        data = loader(path)
        array = np.asarray(data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data)
    except Exception as err:  # any reader error becomes one message naming the file
        cause = err.__cause__ or err
        return (
            f"cannot read image {path}: {_reason(cause)}; the file is truncated, corrupt or not NIfTI - "
            "re-export or re-download it"
        )
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


def inference_images(
    dataset_dir: str | os.PathLike[str], in_channels: int = 1, nonfinite: str = "error"
) -> list[dict[str, str]]:
    """Find the inference images (:func:`find_images`) and check each one, before anything is written.

    Args:
        dataset_dir: a NIfTI image, a folder of them, or a data set folder (:func:`find_images`).
        in_channels: the channels the network takes; a 3-D image has one, a 4-D image ``shape[3]``.
        nonfinite: ``"error"`` (default) fails on NaN or infinite voxels; ``"replace"`` lets them through, for
            :class:`ReplaceNonFinited` to replace (an image without any finite voxel still fails).

    Returns:
        The data list, ``[{"image": path}, ...]``.

    Raises:
        DataValidationError: naming the folder (missing, no images), or every bad image and its problem (unreadable
            or truncated, not 3-D, wrong number of channels, non-finite voxels).
        ValueError: for a ``nonfinite`` other than ``"error"`` / ``"replace"``.
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"nonfinite_voxels must be one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    paths = find_images(dataset_dir)
    loader = LoadImage(image_only=True)
    problems = [p for path in paths if (p := _image_problem(path, in_channels, nonfinite, loader)) is not None]
    if problems:
        raise DataValidationError(problems)
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
