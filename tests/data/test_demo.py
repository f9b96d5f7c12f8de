"""Tests for the embedded demo data set generator (``semiseg.data.demo``)."""

from __future__ import annotations

import json
import pathlib

import nibabel as nib
import numpy as np
import pytest

from semiseg.data.demo import (
    FULL_PROTOCOL,
    LABELS,
    REFERENCE_PROTOCOL,
    SPACING_MM,
    make_demo_dataset,
    render_case,
    sample_case_params,
)

SHAPE = (32, 32, 32)
SMALL = {"num_train": 3, "num_reference": 1, "num_test": 2, "shape": SHAPE}


def _arrays(json_path: pathlib.Path) -> list[tuple[np.ndarray, np.ndarray]]:
    meta = json.loads(json_path.read_text())
    root = json_path.parent
    return [
        (np.asarray(nib.load(str(root / e["image"])).dataobj), np.asarray(nib.load(str(root / e["label"])).dataobj))
        for e in meta["training"] + meta["test"]
    ]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo_a"), seed=0, **SMALL)


def test_same_seed_gives_identical_arrays(small_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    again = make_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    for (img_a, lbl_a), (img_b, lbl_b) in zip(_arrays(small_dataset), _arrays(again), strict=True):
        assert img_a.tobytes() == img_b.tobytes()
        assert lbl_a.tobytes() == lbl_b.tobytes()


def test_different_seed_gives_different_arrays(small_dataset: pathlib.Path, tmp_path: pathlib.Path) -> None:
    other = make_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    for (img_a, lbl_a), (img_b, lbl_b) in zip(_arrays(small_dataset), _arrays(other), strict=True):
        assert not np.array_equal(img_a, img_b)
        assert not np.array_equal(lbl_a, lbl_b)


def test_shapes_dtypes_affines(small_dataset: pathlib.Path) -> None:
    meta = json.loads(small_dataset.read_text())
    expected_affine = np.diag([SPACING_MM, SPACING_MM, SPACING_MM, 1.0])
    for entry in meta["training"] + meta["test"]:
        image = nib.load(str(small_dataset.parent / entry["image"]))
        label = nib.load(str(small_dataset.parent / entry["label"]))
        assert image.shape == SHAPE and label.shape == SHAPE
        assert image.get_data_dtype() == np.float32
        assert label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, expected_affine)
        np.testing.assert_allclose(label.affine, expected_affine)
        assert np.all(np.isfinite(np.asarray(image.dataobj)))


def test_labels_have_both_foreground_classes(small_dataset: pathlib.Path) -> None:
    for image, label in _arrays(small_dataset):
        assert set(np.unique(label).tolist()) == {0, 1, 2}
        assert image.min() >= 0.0  # Rician magnitude
        # The foreground is brighter than air on average, so the image carries the anatomy.
        assert image[label > 0].mean() > image[label == 0].mean()


def test_dataset_json_is_msd_style_and_paths_exist(small_dataset: pathlib.Path) -> None:
    meta = json.loads(small_dataset.read_text())
    for key in ("name", "description", "labels", "modality", "numTraining", "numTest", "training", "test"):
        assert key in meta
    assert meta["labels"] == LABELS == {"0": "background", "1": "organ", "2": "lesion"}
    assert meta["modality"] == {"0": "MR"}
    assert meta["numTraining"] == len(meta["training"]) == SMALL["num_train"]
    assert meta["numTest"] == len(meta["test"]) == SMALL["num_test"]
    assert meta["training"][0] == {"image": "./imagesTr/case_000.nii.gz", "label": "./labelsTr/case_000.nii.gz"}
    for entry in meta["training"] + meta["test"]:
        assert set(entry) == {"image", "label"}
        for path in entry.values():
            assert path.startswith("./")
            assert (small_dataset.parent / path).is_file()
    assert all(e["image"].startswith("./imagesTs/") for e in meta["test"])


def test_existing_complete_dataset_is_reused_and_incomplete_one_regenerated(tmp_path: pathlib.Path) -> None:
    json_path = make_demo_dataset(tmp_path, seed=0, **SMALL)
    first_label = tmp_path / "labelsTr" / "case_000.nii.gz"
    mtime = first_label.stat().st_mtime_ns
    assert make_demo_dataset(tmp_path, seed=0, **SMALL) == json_path
    assert first_label.stat().st_mtime_ns == mtime  # reused, not rewritten
    first_label.unlink()
    make_demo_dataset(tmp_path, seed=0, **SMALL)
    assert first_label.is_file()  # regenerated because a listed file was missing


def test_reference_protocol_is_narrower_than_full() -> None:
    for field in ("organ_contrast", "lesion_contrast", "gamma", "bias_strength", "noise_sigma", "blur_sigma"):
        ref_lo, ref_hi = getattr(REFERENCE_PROTOCOL, field)
        full_lo, full_hi = getattr(FULL_PROTOCOL, field)
        assert full_lo <= ref_lo <= ref_hi <= full_hi
        assert (ref_hi - ref_lo) < 0.5 * (full_hi - full_lo)


def test_render_case_is_a_pure_function_of_params() -> None:
    params = sample_case_params(np.random.default_rng(3), FULL_PROTOCOL, SHAPE)
    image_a, label_a = render_case(params)
    image_b, label_b = render_case(params)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(label_a, label_b)


@pytest.mark.parametrize("bad", [{"num_train": 0}, {"num_reference": 5}, {"shape": (8, 8, 8)}, {"num_test": 1.5}])
def test_invalid_arguments_raise(tmp_path: pathlib.Path, bad: dict[str, object]) -> None:
    kwargs: dict[str, object] = {**SMALL, **bad}
    with pytest.raises(ValueError):
        make_demo_dataset(tmp_path, **kwargs)  # type: ignore[arg-type]
