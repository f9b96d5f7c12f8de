"""validate_datalist: each bad input fails with a DataValidationError naming the file and the problem."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data import DataValidationError, validate_datalist


@pytest.fixture
def pair(
    tmp_path: Path,
    write_volume: Callable[[Path, np.ndarray], str],
    make_image: Callable[..., np.ndarray],
    make_label: Callable[..., np.ndarray],
) -> dict[str, str]:
    """A valid image/label item (8x8x6 NIfTI, labels in 0..2)."""
    return {
        "image": write_volume(tmp_path / "img_3.nii.gz", make_image(3)),
        "label": write_volume(tmp_path / "lbl_3.nii.gz", make_label(3)),
    }


def _raises(items: list[dict[str, str]], pattern: str, **kwargs: object) -> DataValidationError:
    with pytest.raises(DataValidationError, match=pattern) as info:
        validate_datalist(items, **kwargs)  # type: ignore[arg-type]
    return info.value


def test_valid_item_passes(pair: dict[str, str]) -> None:
    validate_datalist([pair], num_classes=3)


def test_error_is_a_value_error(pair: dict[str, str]) -> None:
    os.remove(pair["image"])
    with pytest.raises(ValueError):
        validate_datalist([pair])


def test_missing_image(pair: dict[str, str]) -> None:
    os.remove(pair["image"])
    _raises([pair], re.escape(f"image {pair['image']} does not exist"))


def test_missing_label_file(pair: dict[str, str]) -> None:
    os.remove(pair["label"])
    _raises([pair], re.escape(f"label {pair['label']} does not exist (the label of image {pair['image']})"))


def test_missing_label_key(pair: dict[str, str]) -> None:
    _raises([{"image": pair["image"]}], re.escape(f"image {pair['image']} has no 'label'"))


def test_missing_label_key_allowed_for_unlabelled(pair: dict[str, str]) -> None:
    validate_datalist([{"image": pair["image"]}], require_label=False)


def test_shape_mismatch(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_label: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["label"]), make_label(3, shape=(8, 8, 4)))
    expected = f"label {pair['label']} has shape (8, 8, 4) but its image {pair['image']} has spatial shape (8, 8, 6)"
    _raises([pair], re.escape(expected))


def test_2d_image(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["image"]), make_image(3, shape=(8, 8)))
    _raises([pair], re.escape(f"image {pair['image']} has shape (8, 8), a 2-D array; expected a 3-D volume"))


def test_4d_image_with_channels_last_accepted(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["image"]), make_image(3, shape=(8, 8, 6, 2)))
    validate_datalist([pair], num_classes=3)


def test_4d_image_with_too_many_channels(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["image"]), make_image(3, shape=(8, 8, 6, 9)))
    _raises([pair], re.escape(f"image {pair['image']} has shape (8, 8, 6, 9), a 4-D array"))


def test_4d_label_rejected(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_label: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["label"]), make_label(3, shape=(8, 8, 6, 2)))
    _raises([pair], re.escape(f"label {pair['label']} has shape (8, 8, 6, 2), a 4-D array; labels must be 3-D"))


def test_label_out_of_class_range(pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str]) -> None:
    label = np.zeros((8, 8, 6), dtype=np.uint8)
    label[0, 0, 0], label[1, 0, 0], label[2, 0, 0] = 1, 3, 7
    write_volume(Path(pair["label"]), label)
    expected = f"label {pair['label']} contains values [3, 7] outside the class range 0..2"
    _raises([pair], re.escape(expected), num_classes=3)


def test_large_label_values_allowed_without_num_classes(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str]
) -> None:
    write_volume(Path(pair["label"]), np.full((8, 8, 6), 7, dtype=np.uint8))
    validate_datalist([pair])


def test_label_non_integer_values(pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str]) -> None:
    label = np.zeros((8, 8, 6), dtype=np.float32)
    label[0, 0, 0] = 0.5
    write_volume(Path(pair["label"]), label)
    _raises([pair], re.escape(f"label {pair['label']} contains non-integer values [0.5]"))


def test_label_negative_values(pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str]) -> None:
    label = np.zeros((8, 8, 6), dtype=np.int16)
    label[0, 0, 0] = -1
    write_volume(Path(pair["label"]), label)
    _raises([pair], re.escape(f"label {pair['label']} contains negative values [-1]"))


def test_corrupt_nifti(pair: dict[str, str]) -> None:
    Path(pair["image"]).write_bytes(np.random.default_rng(0).bytes(600))
    _raises([pair], re.escape(f"cannot read image {pair['image']}: "))


def test_truncated_nifti_gz(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(make_image(0, shape=(32, 32, 24)), np.eye(4)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _raises([{"image": str(path)}], re.escape(f"cannot read image {path}: the file is truncated"), require_label=False)


def test_valid_nifti_gz_header_check_does_not_decompress(pair: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import semiseg.data.volumes

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole .nii.gz was decompressed")

    monkeypatch.setattr(semiseg.data.volumes.gzip, "open", fail)
    monkeypatch.setattr(semiseg.data.volumes.gzip, "decompress", fail)
    validate_datalist([{"image": pair["image"]}], require_label=False, check_contents=False)


def test_truncated_nifti_uncompressed(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "img.nii"
    nib.save(nib.Nifti1Image(make_image(0), np.eye(4)), str(path))
    path.write_bytes(path.read_bytes()[:-100])
    _raises([{"image": str(path)}], re.escape(f"cannot read image {path}: the file is truncated"), require_label=False)


def test_truncated_label_nifti_gz(pair: dict[str, str]) -> None:
    data = Path(pair["label"]).read_bytes()
    Path(pair["label"]).write_bytes(data[: len(data) // 2])
    _raises([pair], re.escape(f"cannot read label {pair['label']}: "))


def test_truncated_npy(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "img.npy"
    np.save(path, make_image(0))
    path.write_bytes(path.read_bytes()[:-64])
    _raises([{"image": str(path)}], re.escape(f"cannot read image {path}: "), require_label=False)


def test_npy_image_with_channel_axis_rejected(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "img.npy"
    np.save(path, make_image(0, shape=(8, 8, 6, 2)))
    _raises([{"image": str(path)}], re.escape(f"image {path} has shape (8, 8, 6, 2), a 4-D array"), require_label=False)


def test_unsupported_file_type(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(b"")
    _raises([{"image": str(path)}], re.escape(f"image {path} has an unsupported file type"), require_label=False)


def test_h5_missing_dataset(
    tmp_path: Path, write_h5: Callable[..., str], make_image: Callable[..., np.ndarray]
) -> None:
    h5 = write_h5(tmp_path / "case.h5", datasets={"image": make_image(0)})
    item = {"image": f"{h5}::image", "label": f"{h5}::label"}
    _raises([item], re.escape(f"cannot read label {h5}::label: {h5} has no dataset 'label' (it holds: image)"))


def test_h5_item_valid(tmp_path: Path, write_h5: Callable[..., str]) -> None:
    h5 = write_h5(tmp_path / "case.h5")
    validate_datalist([{"image": f"{h5}::image", "label": f"{h5}::label"}], num_classes=2)


def test_all_problems_reported_together(pair: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "gone.nii.gz")
    error = _raises([pair, {"image": missing, "label": pair["label"]}, {"image": pair["image"]}], "2 problems")
    assert len(error.problems) == 2 and missing in error.problems[0] and "has no 'label'" in error.problems[1]


def test_bad_num_classes(pair: dict[str, str]) -> None:
    _raises([pair], "num_classes must be a positive integer, got 0", num_classes=0)


# --------------------------------------------------------------------------------------------- contents (full read)


def _damage_gzip_middle(path: Path) -> None:
    """Flip one byte in the middle of the deflate stream; the gzip header and trailer (CRC, length) stay intact."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_gzip_damaged_mid_stream_image(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(make_image(0, shape=(32, 32, 24)), np.eye(4)), str(path))
    _damage_gzip_middle(path)
    _raises([{"image": str(path)}], re.escape(f"cannot read image {path}: the file is corrupt"), require_label=False)


def test_gzip_damaged_mid_stream_label(pair: dict[str, str]) -> None:
    _damage_gzip_middle(Path(pair["label"]))
    _raises([pair], re.escape(f"cannot read label {pair['label']}: the file is corrupt"))


def test_gzip_damaged_error_says_what_to_do(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(make_image(0, shape=(32, 32, 24)), np.eye(4)), str(path))
    _damage_gzip_middle(path)
    _raises([{"image": str(path)}], "copy or export it again", require_label=False)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_image_with_non_finite_voxels(
    pair: dict[str, str],
    write_volume: Callable[[Path, np.ndarray], str],
    make_image: Callable[..., np.ndarray],
    bad: float,
) -> None:
    image = make_image(3)
    image[1, 2, 3] = bad
    write_volume(Path(pair["image"]), image)
    counts = "1 NaN and 0 infinite" if np.isnan(bad) else "0 NaN and 1 infinite"
    _raises([pair], re.escape(f"image {pair['image']} has {counts} voxels (of 384)"))


def test_non_finite_voxels_not_read_in_header_only_mode(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    image = make_image(3)
    image[0, 0, 0] = np.nan
    write_volume(Path(pair["image"]), image)
    validate_datalist([pair], check_contents=False)


def test_two_channel_image_when_network_takes_one(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["image"]), make_image(3, shape=(8, 8, 6, 2)))
    expected = f"image {pair['image']} has 2 channels (shape (8, 8, 6, 2)) but the network takes in_channels=1"
    _raises([pair], re.escape(expected), in_channels=1)


def test_single_channel_image_when_network_takes_two(pair: dict[str, str]) -> None:
    expected = f"image {pair['image']} has 1 channel (shape (8, 8, 6)) but the network takes in_channels=2"
    _raises([pair], re.escape(expected), in_channels=2)


def test_channel_count_matching_in_channels_passes(
    pair: dict[str, str], write_volume: Callable[[Path, np.ndarray], str], make_image: Callable[..., np.ndarray]
) -> None:
    write_volume(Path(pair["image"]), make_image(3, shape=(8, 8, 6, 2)))
    validate_datalist([pair], in_channels=2)


def test_bad_in_channels(pair: dict[str, str]) -> None:
    _raises([pair], "in_channels must be a positive integer, got 0", in_channels=0)


def _save_nifti(path: str, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), path)


def test_label_spacing_differs_from_image(pair: dict[str, str], make_label: Callable[..., np.ndarray]) -> None:
    _save_nifti(pair["label"], make_label(3), np.diag([1.5, 1.5, 2.0, 1.0]))
    expected = (
        f"label {pair['label']} is not on its image's voxel grid: label spacing [1.5, 1.5, 2.0] mm, affine "
        f"[[1.5, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]]; image {pair['image']} spacing "
        "[1.0, 1.0, 1.0] mm, affine [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]"
    )
    _raises([pair], re.escape(expected))


def test_label_origin_differs_from_image(pair: dict[str, str], make_label: Callable[..., np.ndarray]) -> None:
    affine = np.eye(4)
    affine[:3, 3] = [0.0, 0.0, 5.0]
    _save_nifti(pair["label"], make_label(3), affine)
    _raises([pair], re.escape(f"[0.0, 0.0, 1.0, 5.0]]; image {pair['image']} spacing [1.0, 1.0, 1.0] mm"))


def test_label_affine_within_float32_rounding_passes(
    pair: dict[str, str], make_image: Callable[..., np.ndarray], make_label: Callable[..., np.ndarray]
) -> None:
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-171.3, 212.9, -480.1]
    _save_nifti(pair["image"], make_image(3), affine)
    _save_nifti(pair["label"], make_label(3), affine + 2e-5)
    validate_datalist([pair], num_classes=3)


def test_label_in_another_format_on_the_same_grid_passes(
    pair: dict[str, str], make_image: Callable[..., np.ndarray], make_label: Callable[..., np.ndarray]
) -> None:
    import itk

    ras = np.diag([1.5, 1.5, 2.0, 1.0])
    ras[:3, 3] = [10.0, 20.0, 30.0]
    _save_nifti(pair["image"], make_image(3), ras)
    label = itk.image_from_array(np.ascontiguousarray(make_label(3).T))  # ITK arrays are (z, y, x)
    label.SetSpacing([1.5, 1.5, 2.0])
    label.SetOrigin([-10.0, -20.0, 30.0])  # LPS
    label.SetDirection(itk.matrix_from_array(np.diag([-1.0, -1.0, 1.0])))
    nrrd = str(Path(pair["label"]).with_suffix("").with_suffix(".nrrd"))
    itk.imwrite(label, nrrd)
    validate_datalist([{"image": pair["image"], "label": nrrd}], num_classes=3)


def test_label_in_another_format_off_the_grid_fails(
    pair: dict[str, str], make_image: Callable[..., np.ndarray], make_label: Callable[..., np.ndarray]
) -> None:
    import itk

    _save_nifti(pair["image"], make_image(3), np.eye(4))  # RAS identity = LPS diag(-1, -1, 1)
    label = itk.image_from_array(np.ascontiguousarray(make_label(3).T))  # LPS identity: flipped in x and y
    nrrd = str(Path(pair["label"]).with_suffix("").with_suffix(".nrrd"))
    itk.imwrite(label, nrrd)
    _raises([{"image": pair["image"], "label": nrrd}], re.escape(f"label {nrrd} is not on its image's voxel grid"))
