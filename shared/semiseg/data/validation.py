"""Check a data list before training: every file exists, reads whole, is a 3-D volume with the network's number of
channels and finite voxels, and labels match their images (shape, affine, class values).

By default every file is read completely (``check_contents``): a ``.nii.gz`` is decompressed and its gzip CRC
checked, image voxels are checked for NaN/inf. With ``check_contents=False`` images are checked from their headers
only; label voxels are always loaded to check their values. All problems of a data list are collected and raised
together as one :class:`~semiseg.data.errors.DataValidationError`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import DataValidationError
from .volumes import VolumeHeader, read_header, read_volume, volume_format

__all__ = [
    "AFFINE_TOLERANCE_MM",
    "MAX_CHANNELS",
    "validate_datalist",
    "collect_problems",
    "image_spatial_shape",
    "image_channels",
    "label_spatial_shape",
]

MAX_CHANNELS = 8
"""Largest 4th dimension of a NIfTI/NRRD image read as channels (MSD multi-modal images have 1-4)."""

AFFINE_TOLERANCE_MM = 1e-3
"""Largest difference (mm, or direction-cosine units) between an image's and its label's affine entries: far below
a voxel, above the rounding of headers stored in float32."""

_MAX_VALUES_SHOWN = 10


def validate_datalist(
    items: Sequence[Mapping[str, Any]],
    num_classes: int | None = None,
    require_label: bool = True,
    in_channels: int | None = None,
    check_contents: bool = True,
) -> None:
    """Check every item of a data list and raise one error listing all problems found.

    For each item: the image (and label) file exists and reads (a truncated NIfTI is caught; with
    ``check_contents``, also a ``.nii.gz`` whose gzip stream is damaged anywhere, and an image with NaN or infinite
    voxels); the image is 3-D, or 4-D NIfTI/NRRD with at most :data:`MAX_CHANNELS` channels last, and has
    ``in_channels`` channels when given; the label is 3-D, has the image's spatial shape and affine (within
    :data:`AFFINE_TOLERANCE_MM`; formats without geometry, ``.npy`` and HDF5, are not compared) and holds integer
    class indices ``>= 0``, below ``num_classes`` when given.

    Args:
        items: dicts with an ``"image"`` path and, for labelled data, a ``"label"`` path (``"file.h5::dataset"`` for
            HDF5).
        num_classes: the number of classes including background; ``None`` skips the upper bound on label values.
        require_label: whether an item without ``"label"`` is a problem.
        in_channels: the channels the network takes (a 3-D image has 1); ``None`` skips the check.
        check_contents: read every image whole (gzip CRC, NaN/inf voxels); ``False`` reads image headers only.

    Raises:
        DataValidationError: naming each offending file and what is wrong with it.
    """
    problems = collect_problems(
        items,
        num_classes=num_classes,
        require_label=require_label,
        in_channels=in_channels,
        check_contents=check_contents,
    )
    if problems:
        raise DataValidationError(problems)


def collect_problems(
    items: Sequence[Mapping[str, Any]],
    num_classes: int | None = None,
    require_label: bool = True,
    in_channels: int | None = None,
    check_contents: bool = True,
) -> list[str]:
    """The problems :func:`validate_datalist` would raise, as a list (empty when the data list is fine).

    Args:
        items: as for :func:`validate_datalist`.
        num_classes: as for :func:`validate_datalist`.
        require_label: as for :func:`validate_datalist`.
        in_channels: as for :func:`validate_datalist`.
        check_contents: as for :func:`validate_datalist`.

    Returns:
        One line per problem.

    Raises:
        DataValidationError: if ``num_classes`` or ``in_channels`` is not a positive integer.
    """
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise DataValidationError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    problems: list[str] = []
    for index, item in enumerate(items):
        try:
            _check_item(index, item, num_classes, require_label, in_channels, check_contents)
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


def image_channels(path: str, shape: tuple[int, ...], in_channels: int | None) -> int:
    """The number of channels of an image (1 for a 3-D volume, the last axis of a 4-D one), checked if asked.

    Args:
        path: the image path, for the error message.
        shape: its shape (spatial axes first, channels last), already accepted by :func:`image_spatial_shape`.
        in_channels: the channels the network takes; ``None`` accepts any number.

    Returns:
        The number of channels.

    Raises:
        DataValidationError: if ``in_channels`` is given and differs.
    """
    channels = shape[3] if len(shape) == 4 else 1
    if in_channels is None or channels == in_channels:
        return channels
    raise DataValidationError(
        f"image {path} has {channels} channel{'s' if channels != 1 else ''} (shape {shape}) but the network takes "
        f"in_channels={in_channels}: give every image {in_channels} channel{'s' if in_channels != 1 else ''} (a 3-D "
        f"volume is 1, a 4-D NIfTI/NRRD has them on its last axis), or set in_channels={channels} if every image has "
        f"{channels}"
    )


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


def _check_item(
    index: int,
    item: Mapping[str, Any],
    num_classes: int | None,
    require_label: bool,
    in_channels: int | None,
    check_contents: bool,
) -> None:
    if not isinstance(item, Mapping) or "image" not in item:
        raise DataValidationError(f"item {index} of the data list has no 'image' path: {item!r}")
    image = _path(item["image"], "image", index)
    if check_contents:
        image_header, image_voxels = read_volume(image, "image")
    else:
        image_header, image_voxels = read_header(image, "image"), None
    image_shape = image_spatial_shape(image, image_header.shape)
    image_channels(image, image_header.shape, in_channels)
    if image_voxels is not None:
        _check_finite(image, image_voxels)
    if "label" not in item or item["label"] is None:
        if require_label:
            raise DataValidationError(f"image {image} has no 'label' in the data list (labelled items need one)")
        return
    label = _path(item["label"], "label", index)
    try:
        label_header, voxels = read_volume(label, "label")
    except DataValidationError as err:
        raise DataValidationError(f"{err} (the label of image {image})") from err
    label_shape = label_spatial_shape(label, tuple(int(s) for s in voxels.shape))
    if label_shape != image_shape:
        raise DataValidationError(
            f"label {label} has shape {label_shape} but its image {image} has spatial shape {image_shape}"
        )
    _check_same_grid(image, image_header, label, label_header)
    _check_label_values(label, voxels, num_classes)


def _check_finite(image: str, voxels: np.ndarray) -> None:
    arr = np.asarray(voxels)
    if arr.dtype.kind not in "fc":
        return
    finite = np.isfinite(arr)
    if finite.all():
        return
    nan = int(np.isnan(arr).sum())
    inf = int(arr.size - finite.sum()) - nan
    raise DataValidationError(
        f"image {image} has {nan} NaN and {inf} infinite voxels (of {arr.size}); they would turn the loss and "
        "metrics into NaN: replace them in the file (e.g. numpy.nan_to_num) or remove the case"
    )


def _check_same_grid(image: str, image_header: VolumeHeader, label: str, label_header: VolumeHeader) -> None:
    """A label must lie on its image's voxel grid: the same affine (spacing, direction, origin)."""
    a_img, a_lbl = image_header.affine, label_header.affine
    if a_img is None or a_lbl is None or np.allclose(a_img, a_lbl, rtol=0.0, atol=AFFINE_TOLERANCE_MM):
        return
    raise DataValidationError(
        f"label {label} is not on its image's voxel grid: label spacing {_spacing(a_lbl)} mm, affine "
        f"{_matrix(a_lbl)}; image {image} spacing {_spacing(a_img)} mm, affine {_matrix(a_img)}. Resample the label "
        "onto the image grid (nearest neighbour) or save it with the image's header, if it was exported with a "
        "wrong one"
    )


def _spacing(affine: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def _matrix(affine: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) + 0.0 for v in row] for row in affine[:3]]


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
        f"label {label} contains values {_values(bad)} outside the class range 0..{num_classes - 1} "
        f"(num_classes {num_classes}; binarise_label true merges every label > 0 into one foreground class)"
    )


def _values(values: np.ndarray) -> str:
    unique = np.unique(values)
    shown = [int(v) if float(v).is_integer() else float(v) for v in unique[:_MAX_VALUES_SHOWN]]
    more = len(unique) - _MAX_VALUES_SHOWN
    return str(shown) if more <= 0 else f"{str(shown)[:-1]}, ...] ({len(unique)} distinct values)"
