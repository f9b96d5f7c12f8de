"""H5Reader and LoadVolumed: ``file.h5::dataset`` items load as arrays, other formats keep MONAI's readers."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd

from semiseg.data import H5Reader, LoadVolumed, split_h5_path


@pytest.fixture
def h5_case(tmp_path: Path, write_h5: Callable[..., str], make_image: Callable[..., np.ndarray]) -> dict[str, object]:
    """An ``.h5`` with a float image and a uint8 label of shape (8, 8, 6), and those arrays."""
    image = make_image(1)
    label = (image > 0).astype(np.uint8)
    path = write_h5(tmp_path / "case.h5", datasets={"image": image, "label": label})
    return {"path": path, "image": image, "label": label}


def test_split_h5_path() -> None:
    assert split_h5_path("/d/case.h5::label") == ("/d/case.h5", "label")
    assert split_h5_path("/d/case.h5") == ("/d/case.h5", None)
    assert split_h5_path("/d/case.h5", default_dataset="image") == ("/d/case.h5", "image")


def test_h5_reader_claims_only_h5_paths() -> None:
    reader = H5Reader()
    assert reader.verify_suffix("/d/case.h5::image")
    assert reader.verify_suffix(["/d/a.hdf5::image", "/d/b.H5::label"])
    assert not reader.verify_suffix("/d/case.h5")  # no dataset named
    assert not reader.verify_suffix("/d/case.nii.gz")
    assert not reader.verify_suffix("/d/case.npy")


def test_h5_reader_reads_the_named_dataset(h5_case: dict[str, object]) -> None:
    reader = H5Reader()
    array, meta = reader.get_data(reader.read(f"{h5_case['path']}::label"))
    np.testing.assert_array_equal(array, h5_case["label"])
    np.testing.assert_array_equal(meta["affine"], np.eye(4))
    np.testing.assert_array_equal(meta["spatial_shape"], (8, 8, 6))
    assert math.isnan(meta["original_channel_dim"])


def test_h5_reader_missing_dataset_names_what_exists(h5_case: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"no dataset 'mask' \(it has: image, label\)"):
        H5Reader().read(f"{h5_case['path']}::mask")


def test_load_volumed_h5_then_ensure_channel_first(h5_case: dict[str, object]) -> None:
    path = h5_case["path"]
    load = Compose([LoadVolumed(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"])])
    data = load({"image": f"{path}::image", "label": f"{path}::label"})
    assert data["image"].shape == (1, 8, 8, 6) and data["label"].shape == (1, 8, 8, 6)
    np.testing.assert_allclose(data["image"][0].numpy(), h5_case["image"])
    np.testing.assert_array_equal(data["label"][0].numpy(), h5_case["label"])


def test_load_volumed_h5_with_ensure_channel_first_argument(h5_case: dict[str, object]) -> None:
    data = LoadVolumed(keys="image", ensure_channel_first=True)({"image": f"{h5_case['path']}::image"})
    assert data["image"].shape == (1, 8, 8, 6)


def test_load_volumed_h5_with_explicit_reader(h5_case: dict[str, object]) -> None:
    data = LoadVolumed(keys="image", reader="NibabelReader")({"image": f"{h5_case['path']}::image"})
    np.testing.assert_allclose(data["image"].numpy(), h5_case["image"])


def test_load_volumed_npy_then_ensure_channel_first(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    image = make_image(2)
    np.save(tmp_path / "img.npy", image)
    load = Compose([LoadVolumed(keys="image"), EnsureChannelFirstd(keys="image")])
    data = load({"image": str(tmp_path / "img.npy")})
    assert data["image"].shape == (1, 8, 8, 6)
    np.testing.assert_allclose(data["image"][0].numpy(), image)


def test_load_volumed_nifti_keeps_nibabel_reader(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    image = make_image(3)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "img.nii.gz"))
    data = LoadVolumed(keys="image", ensure_channel_first=True)({"image": str(tmp_path / "img.nii.gz")})
    assert data["image"].shape == (1, 8, 8, 6)
    np.testing.assert_allclose(data["image"][0].numpy(), image)
    np.testing.assert_allclose(data["image"].affine.numpy(), affine)


def test_load_volumed_multimodal_nifti_channels_first(tmp_path: Path, make_image: Callable[..., np.ndarray]) -> None:
    image = make_image(4, shape=(8, 8, 6, 2))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "img.nii.gz"))
    load = Compose([LoadVolumed(keys="image"), EnsureChannelFirstd(keys="image")])
    data = load({"image": str(tmp_path / "img.nii.gz")})
    assert data["image"].shape == (2, 8, 8, 6)
    np.testing.assert_allclose(data["image"][1].numpy(), image[..., 1])
