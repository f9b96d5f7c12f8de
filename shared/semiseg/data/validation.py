"""Check a data list before training: every file exists, reads, is a 3-D volume, and labels match their images.

Shapes come from headers only; label voxels are loaded (labelled sets are small) to check their values. All problems
of a data list are collected and raised together as one :class:`~semiseg.data.errors.DataValidationError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DataValidationError
from .volumes import read_shape, read_voxels, volume_format

__all__ = ["MAX_CHANNELS", "validate_datalist", "collect_problems", "image_spatial_shape", "label_spatial_shape"]

MAX_CHANNELS = 8
"""Largest 4th dimension of a NIfTI/NRRD image read as channels (MSD multi-modal images have 1-4)."""

_MAX_VALUES_SHOWN = 10


def validate_datalist(
    items: Sequence[Mapping[str, Any]], num_classes: int | None = None, require_label: bool = True
) -> None:
    """Check every item of a data list and raise one error listing all problems found.

    For each item: the image (and label) file exists and its header reads (a truncated NIfTI is caught); the image
    is 3-D, or 4-D NIfTI/NRRD with at most :data:`MAX_CHANNELS` channels last; the label is 3-D, has the image's
    spatial shape and holds integer class indices ``>= 0``, below ``num_classes`` when given.

    Args:
        items: dicts with an ``"image"`` path and, for labelled data, a ``"label"`` path (``"file.h5::dataset"`` for
            HDF5).
        num_classes: the number of classes including background; ``None`` skips the upper bound on label values.
        require_label: whether an item without ``"label"`` is a problem.

    Raises:
        DataValidationError: naming each offending file and what is wrong with it.
    """
    problems = collect_problems(items, num_classes=num_classes, require_label=require_label)
    if problems:
        raise DataValidationError(problems)


def collect_problems(
    items: Sequence[Mapping[str, Any]], num_classes: int | None = None, require_label: bool = True
) -> list[str]:
    """The problems :func:`validate_datalist` would raise, as a list (empty when the data list is fine).

    Args:
        items: as for :func:`validate_datalist`.
        num_classes: as for :func:`validate_datalist`.
        require_label: as for :func:`validate_datalist`.

    Returns:
        One line per problem.

    Raises:
        DataValidationError: if ``num_classes`` is not a positive integer.
    """
    valid_count = isinstance(num_classes, int) and not isinstance(num_classes, bool) and num_classes >= 1
    if num_classes is not None and not valid_count:
        raise DataValidationError(
            f"num_classes must be a positive integer, got {num_classes!r} ({type(num_classes).__name__})"
        )
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            _check_item(index, item, num_classes, require_label)
        except DataValidationError as err:
            problems.extend(err.problems)
    return problems


def image_spatial_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial shape of an image, or why it is not a 3-D volume.

    Args:
        path: the image path (decides whether a 4th dimension may be channels: NIfTI and NRRD only).
        shape: the shape from its header.

    Returns:
        The first three dimensions.

    Raises:
        DataValidationError: for a 1-D or 2-D image, a 4-D image with more than :data:`MAX_CHANNELS` channels or in
            a format without channels, or more than 4 dimensions.
    """
    if len(shape) == 3:
        return shape
    channels_allowed = volume_format(path) in ("nifti", "nrrd")
    if len(shape) == 4 and channels_allowed and shape[3] <= MAX_CHANNELS:
        return shape[:3]
    expected = "a 3-D volume (H, W, D)" + (
        f", or (H, W, D, C) with at most {MAX_CHANNELS} channels" if channels_allowed else " without channel axis"
    )
    raise DataValidationError(f"image {path} has shape {shape}, a {len(shape)}-D array; expected {expected}")


def label_spatial_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The spatial shape of a label, or why it is not a 3-D volume (a trailing axis of size 1 is allowed).

    Args:
        path: the label path.
        shape: its shape.

    Returns:
        The three spatial dimensions.

    Raises:
        DataValidationError: unless the label is 3-D (or 4-D with a last axis of size 1).
    """
    if len(shape) == 3:
        return shape
    if len(shape) == 4 and shape[3] == 1:
        return shape[:3]
    raise DataValidationError(
        f"label {path} has shape {shape}, a {len(shape)}-D array; labels must be 3-D (one class index per voxel)"
    )


def _check_item(index: int, item: Mapping[str, Any], num_classes: int | None, require_label: bool) -> None:
    if not isinstance(item, Mapping) or "image" not in item:
        raise DataValidationError(f"item {index} of the data list has no 'image' path: {item!r}")
    image = _path(item["image"], "image", index)
    image_shape = image_spatial_shape(image, read_shape(image, "image"))
    if "label" not in item or item["label"] is None:
        if require_label:
            raise DataValidationError(f"image {image} has no 'label' in the data list (labelled items need one)")
        return
    label = _path(item["label"], "label", index)
    try:
        voxels = read_voxels(label, "label")
    except DataValidationError as err:
        raise DataValidationError(f"{err} (the label of image {image})") from err
    label_shape = label_spatial_shape(label, tuple(int(s) for s in voxels.shape))
    if label_shape != image_shape:
        raise DataValidationError(
            f"label {label} has shape {label_shape} but its image {image} has spatial shape {image_shape}"
        )
    _check_label_values(label, voxels, num_classes)


def _path(value: Any, role: str, index: int) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    raise DataValidationError(
        f"item {index} of the data list has a {role} that is not a path: {value!r} ({type(value).__name__})"
    )


def _check_label_values(label: str, voxels: np.ndarray, num_classes: int | None) -> None:
    arr = np.asarray(voxels)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise DataValidationError(f"label {label} has dtype {arr.dtype}; labels must hold integer class indices")
    if arr.size == 0:
        raise DataValidationError(f"label {label} is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        if not finite.all():
            raise DataValidationError(f"label {label} contains NaN or infinite values")
        fractional = arr != np.round(arr)
        if fractional.any():
            raise DataValidationError(
                f"label {label} contains non-integer values {_values(arr[fractional])}; "
                "labels must hold integer class indices"
            )
    upper = math.inf if num_classes is None else num_classes
    if arr.min() >= 0 and arr.max() < upper:
        return
    bad = arr[(arr < 0) | (arr >= upper)]
    if num_classes is None:
        raise DataValidationError(f"label {label} contains negative values {_values(bad)}; class indices start at 0")
    raise DataValidationError(
        f"label {label} contains values {_values(bad)} outside the class range 0..{num_classes - 1}"
    )


def _values(values: np.ndarray) -> str:
    unique = np.unique(values)
    shown = [int(v) if float(v).is_integer() else float(v) for v in unique[:_MAX_VALUES_SHOWN]]
    more = len(unique) - _MAX_VALUES_SHOWN
    return str(shown) if more <= 0 else f"{str(shown)[:-1]}, ...] ({len(unique)} distinct values)"
