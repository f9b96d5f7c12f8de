"""Format-agnostic access to one volume file for validation: its shape from the header, or its voxels.

Supported: NIfTI (``.nii``, ``.nii.gz``; nibabel), NRRD (``.nrrd``, ``.nhdr``; itk), numpy (``.npy``) and HDF5
datasets (``"file.h5::dataset"``; h5py). Shapes are reported in the axis order MONAI's readers return
(``(H, W, D)``, channels last), so they compare directly between images and labels of any format. Every failure is a
:class:`~semiseg.data.errors.DataValidationError` that names the file and the reason.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import DataValidationError
from .readers import H5_SEPARATOR, is_h5_path, split_h5_path

if TYPE_CHECKING:
    import h5py

__all__ = ["VolumeFormat", "VOLUME_SUFFIXES", "volume_format", "volume_file", "read_shape", "read_voxels"]

VolumeFormat = Literal["nifti", "nrrd", "npy", "h5"]

VOLUME_SUFFIXES: dict[str, VolumeFormat] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".npy": "npy",
}
"""File suffixes (lower case) of the single-volume formats; HDF5 files are addressed as ``file.h5::dataset``."""

_GZIP_CHUNK = 1 << 20


def volume_format(path: str, role: str = "image") -> VolumeFormat:
    """The format of ``path``, from its suffix.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        One of ``"nifti"``, ``"nrrd"``, ``"npy"``, ``"h5"``.

    Raises:
        DataValidationError: for any other suffix, or an HDF5 path without ``::dataset``.
    """
    if is_h5_path(path):
        if split_h5_path(path)[1] is None:
            raise DataValidationError(
                f"{role} {path} is an HDF5 file but names no dataset: write '{path}{H5_SEPARATOR}{role}'"
            )
        return "h5"
    lower = path.lower()
    for suffix, fmt in VOLUME_SUFFIXES.items():
        if lower.endswith(suffix):
            return fmt
    known = ", ".join([*VOLUME_SUFFIXES, f".h5{H5_SEPARATOR}<dataset>"])
    raise DataValidationError(f"{role} {path} has an unsupported file type; expected one of {known}")


def volume_file(path: str) -> str:
    """The file behind a volume path: ``path`` itself, or the part before ``::`` of an HDF5 path."""
    return split_h5_path(path)[0] if is_h5_path(path) else path


def read_shape(path: str, role: str = "image") -> tuple[int, ...]:
    """Read a volume's shape from its header, without loading the voxels.

    NIfTI files are also checked for truncation (file size, or the gzip trailer's length field, against the size the
    header promises), since nibabel reads headers lazily.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        The shape as MONAI's reader loads it: spatial axes first, channels (if any) last.

    Raises:
        DataValidationError: if the file does not exist, cannot be read, or is truncated.
    """
    fmt = volume_format(path, role)
    _require_exists(path, role)
    try:
        if fmt == "nifti":
            return _nifti_shape(path, role)
        if fmt == "nrrd":
            return _itk_shape(path, role)
        if fmt == "npy":
            return tuple(int(s) for s in np.load(path, mmap_mode="r", allow_pickle=False).shape)
        with _h5_dataset(path, role) as dataset:
            return tuple(int(s) for s in dataset.shape)
    except DataValidationError:
        raise
    except Exception as err:  # any library error reading the file becomes one message naming it
        raise DataValidationError(f"cannot read {role} {path}: {_reason(err)}") from err


def read_voxels(path: str, role: str = "label") -> np.ndarray:
    """Load a volume's voxels, in the axis order MONAI's reader returns.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        The voxel array.

    Raises:
        DataValidationError: if the file does not exist or cannot be read completely.
    """
    fmt = volume_format(path, role)
    _require_exists(path, role)
    try:
        if fmt == "nifti":
            import nibabel as nib

            return np.asanyarray(nib.load(path).dataobj)
        if fmt == "nrrd":
            from monai.data import ITKReader

            reader = ITKReader()
            return np.asarray(reader.get_data(reader.read(path))[0])
        if fmt == "npy":
            return np.load(path, allow_pickle=False)
        with _h5_dataset(path, role) as dataset:
            return np.asarray(dataset[()])
    except DataValidationError:
        raise
    except Exception as err:  # any library error reading the file becomes one message naming it
        raise DataValidationError(f"cannot read {role} {path}: {_reason(err)}") from err


def _require_exists(path: str, role: str) -> None:
    file = volume_file(path)
    if not os.path.exists(file):
        raise DataValidationError(f"{role} {path} does not exist")
    if not os.path.isfile(file):
        raise DataValidationError(f"{role} {path} is not a file")


def _reason(err: BaseException) -> str:
    text = str(err).strip() or "unreadable"
    return f"{text} ({type(err).__name__})"


def _nifti_shape(path: str, role: str) -> tuple[int, ...]:
    import nibabel as nib

    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
    offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))  # the header copy may say 0
    expected = offset + int(np.prod(shape)) * img.header.get_data_dtype().itemsize
    if path.lower().endswith(".gz"):
        _check_gzip_length(path, role, expected)
    elif os.path.getsize(path) < expected:
        size = os.path.getsize(path)
        message = f"cannot read {role} {path}: the file is truncated ({size} bytes, its header needs {expected})"
        raise DataValidationError(message)
    return shape


def _check_gzip_length(path: str, role: str, expected: int) -> None:
    """Compare the gzip trailer's length (ISIZE, mod 2**32) with ``expected``; decompress fully only on mismatch."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        isize = int.from_bytes(f.read(4), "little")
    if isize == expected % (1 << 32):
        return
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_GZIP_CHUNK):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as err:
        message = f"cannot read {role} {path}: the file is truncated or corrupt ({_reason(err)})"
        raise DataValidationError(message) from err
    if total < expected:
        message = f"cannot read {role} {path}: the file is truncated ({total} bytes unpacked, header needs {expected})"
        raise DataValidationError(message)


def _itk_shape(path: str, role: str) -> tuple[int, ...]:
    import itk

    image_io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise DataValidationError(f"cannot read {role} {path}: no ITK image IO recognises the file")
    image_io.SetFileName(path)
    image_io.ReadImageInformation()
    shape = [int(image_io.GetDimensions(i)) for i in range(image_io.GetNumberOfDimensions())]
    if image_io.GetNumberOfComponents() > 1:
        shape.append(int(image_io.GetNumberOfComponents()))
    return tuple(shape)


@contextmanager
def _h5_dataset(path: str, role: str) -> Iterator[h5py.Dataset]:
    """Open the dataset named by ``"file.h5::dataset"``, failing with the datasets the file does hold."""
    import h5py

    file, name = split_h5_path(path)
    with h5py.File(file, "r") as h5:
        node = h5.get(name)
        if not isinstance(node, h5py.Dataset):
            found = ", ".join(sorted(h5.keys())) or "nothing"
            raise DataValidationError(f"cannot read {role} {path}: {file} has no dataset '{name}' (it holds: {found})")
        yield node
