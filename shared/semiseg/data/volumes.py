"""Format-agnostic access to one volume file for validation: its header (shape, affine), or all of it.

Supported: NIfTI (``.nii``, ``.nii.gz``; nibabel), NRRD (``.nrrd``, ``.nhdr``; itk), numpy (``.npy``) and HDF5
datasets (``"file.h5::dataset"``; h5py). Shapes are reported in the axis order MONAI's readers return
(``(H, W, D)``, channels last), so they compare directly between images and labels of any format; affines are in
RAS world coordinates (millimetres), as MONAI's readers return them. Every failure is a
:class:`~semiseg.data.errors.DataValidationError` that names the file and the reason.

A full read (:func:`read_volume`) of a ``.nii.gz`` decompresses the whole gzip stream and checks its CRC-32 and
length trailer: nibabel stops reading at the last voxel, so a stream damaged in the middle would otherwise load as
silently wrong voxels.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import DataValidationError
from .files import gunzip_checked, require_nonempty
from .readers import H5_SEPARATOR, is_h5_path, split_h5_path

if TYPE_CHECKING:
    import h5py

__all__ = [
    "VolumeFormat",
    "VolumeHeader",
    "VOLUME_SUFFIXES",
    "volume_format",
    "volume_file",
    "read_header",
    "read_shape",
    "read_volume",
    "read_voxels",
]

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


@dataclass(frozen=True)
class VolumeHeader:
    """What a volume's header says about it.

    Attributes:
        shape: as MONAI's reader loads it: spatial axes first, channels (if any) last.
        affine: the 4x4 voxel-to-world (RAS, mm) matrix, or ``None`` for formats that store no geometry (``.npy``,
            HDF5: MONAI gives them an identity affine).
    """

    shape: tuple[int, ...]
    affine: np.ndarray | None


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


def read_header(path: str, role: str = "image") -> VolumeHeader:
    """Read a volume's shape and affine from its header, without loading the voxels.

    NIfTI files are also checked for truncation (file size, or the gzip trailer's length field, against the size the
    header promises), since nibabel reads headers lazily.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        The shape and affine.

    Raises:
        DataValidationError: if the file does not exist, cannot be read, or is truncated.
    """
    fmt = volume_format(path, role)
    _require_exists(path, role)
    try:
        if fmt == "nifti":
            return _nifti_header(path, role)
        if fmt == "nrrd":
            return _itk_header(path, role)
        if fmt == "npy":
            return VolumeHeader(tuple(int(s) for s in np.load(path, mmap_mode="r", allow_pickle=False).shape), None)
        with _h5_dataset(path, role) as dataset:
            return VolumeHeader(tuple(int(s) for s in dataset.shape), None)
    except DataValidationError:
        raise
    except Exception as err:  # any library error reading the file becomes one message naming it
        raise DataValidationError(f"cannot read {role} {path}: {_reason(err)}") from err


def read_shape(path: str, role: str = "image") -> tuple[int, ...]:
    """A volume's shape from its header (:func:`read_header`), without loading the voxels.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        The shape as MONAI's reader loads it: spatial axes first, channels (if any) last.

    Raises:
        DataValidationError: if the file does not exist, cannot be read, or is truncated.
    """
    return read_header(path, role).shape


def read_volume(path: str, role: str = "image") -> tuple[VolumeHeader, np.ndarray]:
    """Read a whole volume file: its header and its voxels, in the axis order MONAI's reader returns.

    A ``.nii.gz`` is decompressed completely, once, and its gzip CRC-32 and length are checked (module note).

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        ``(header, voxels)``.

    Raises:
        DataValidationError: if the file does not exist, is truncated or corrupt, or cannot be read completely.
    """
    fmt = volume_format(path, role)
    _require_exists(path, role)
    try:
        if fmt == "nifti":
            return _nifti_volume(path, role)
        if fmt == "nrrd":
            from monai.data import ITKReader

            header = _itk_header(path, role)
            reader = ITKReader()
            return header, np.asarray(reader.get_data(reader.read(path))[0])
        if fmt == "npy":
            voxels = np.load(path, allow_pickle=False)
            return VolumeHeader(tuple(int(s) for s in voxels.shape), None), voxels
        with _h5_dataset(path, role) as dataset:
            voxels = np.asarray(dataset[()])
        return VolumeHeader(tuple(int(s) for s in voxels.shape), None), voxels
    except DataValidationError:
        raise
    except Exception as err:  # any library error reading the file becomes one message naming it
        raise DataValidationError(f"cannot read {role} {path}: {_reason(err)}") from err


def read_voxels(path: str, role: str = "label") -> np.ndarray:
    """Load a volume's voxels (:func:`read_volume`), in the axis order MONAI's reader returns.

    Args:
        path: a volume path (``"file.h5::dataset"`` for HDF5).
        role: ``"image"`` or ``"label"``, for the error message.

    Returns:
        The voxel array.

    Raises:
        DataValidationError: if the file does not exist or cannot be read completely.
    """
    return read_volume(path, role)[1]


def _require_exists(path: str, role: str) -> None:
    file = volume_file(path)
    if not os.path.exists(file):
        raise DataValidationError(f"{role} {path} does not exist")
    if not os.path.isfile(file):
        raise DataValidationError(f"{role} {path} is not a file")
    require_nonempty(file, role)


def _reason(err: BaseException) -> str:
    text = str(err).strip() or "unreadable"
    return f"{text} ({type(err).__name__})"


def _nifti_header(path: str, role: str) -> VolumeHeader:
    import nibabel as nib

    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
    expected = _nifti_size(img)
    if path.lower().endswith(".gz"):
        _check_gzip_length(path, role, expected)
    elif os.path.getsize(path) < expected:
        _raise_truncated(path, role, os.path.getsize(path), expected)
    return VolumeHeader(shape, np.asarray(img.affine, dtype=np.float64))


def _nifti_size(img: Any) -> int:
    """The bytes a NIfTI file needs: the voxel offset plus the voxel data its header promises."""
    offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))  # the header copy may say 0
    return offset + int(np.prod(img.shape)) * img.header.get_data_dtype().itemsize


def _raise_truncated(path: str, role: str, size: int, expected: int, unpacked: bool = False) -> None:
    what = "bytes unpacked" if unpacked else "bytes"
    raise DataValidationError(
        f"cannot read {role} {path}: the file is truncated ({size} {what}, its header needs {expected}); "
        "copy or export it again"
    )


def _nifti_volume(path: str, role: str) -> tuple[VolumeHeader, np.ndarray]:
    """Read a NIfTI file in one pass: a ``.gz`` stream decompressed whole with its CRC checked, then parsed."""
    import nibabel as nib

    if path.lower().endswith(".gz"):
        data = gunzip_checked(path, role)
    else:
        with open(path, "rb") as f:
            data = f.read()
    # NIfTI-2 headers are 540 bytes, NIfTI-1 348; the size is the first int32, in the file's byte order
    nifti2 = 540 in (int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big"))
    img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image).from_bytes(data)
    expected = _nifti_size(img)
    if len(data) < expected:
        _raise_truncated(path, role, len(data), expected, unpacked=path.lower().endswith(".gz"))
    header = VolumeHeader(tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=np.float64))
    return header, np.asanyarray(img.dataobj)


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
        _raise_truncated(path, role, total, expected, unpacked=True)


def _itk_header(path: str, role: str) -> VolumeHeader:
    import itk
    from monai.data.utils import orientation_ras_lps

    image_io = itk.ImageIOFactory.CreateImageIO(path, itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise DataValidationError(f"cannot read {role} {path}: no ITK image IO recognises the file")
    image_io.SetFileName(path)
    image_io.ReadImageInformation()
    ndim = int(image_io.GetNumberOfDimensions())
    shape = [int(image_io.GetDimensions(i)) for i in range(ndim)]
    if image_io.GetNumberOfComponents() > 1:
        shape.append(int(image_io.GetNumberOfComponents()))
    # the same construction as monai.data.ITKReader._get_affine: direction x spacing, origin, LPS -> RAS
    sr = min(max(ndim, 1), 3)
    direction = np.array([[float(image_io.GetDirection(j)[i]) for j in range(ndim)] for i in range(ndim)])
    spacing = np.array([float(image_io.GetSpacing(i)) for i in range(ndim)])
    affine = np.eye(sr + 1)
    affine[:sr, :sr] = direction[:sr, :sr] @ np.diag(spacing[:sr])
    affine[:sr, -1] = [float(image_io.GetOrigin(i)) for i in range(sr)]
    return VolumeHeader(tuple(shape), np.asarray(orientation_ras_lps(affine), dtype=np.float64))


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
