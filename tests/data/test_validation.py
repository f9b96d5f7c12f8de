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
    validate_datalist([{"image": pair["image"]}], require_label=False)


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
