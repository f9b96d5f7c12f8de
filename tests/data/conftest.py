"""Tiny on-disk volumes and data sets for the data-layer tests (8x8x6 voxels, written into ``tmp_path``)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import nibabel as nib
import numpy as np
import pytest

SHAPE = (8, 8, 6)


def _image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _label(seed: int, shape: tuple[int, ...] = SHAPE, num_classes: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=shape).astype(np.uint8)


def _write(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".npy"):
        np.save(path, array)
    else:
        nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return str(path)


@pytest.fixture
def write_volume() -> Callable[[Path, np.ndarray], str]:
    """Write an array as ``.nii``/``.nii.gz``/``.npy`` (by suffix), creating folders; returns the path."""
    return _write


@pytest.fixture
def make_image() -> Callable[..., np.ndarray]:
    """A float32 image array, ``SHAPE`` by default."""
    return _image


@pytest.fixture
def make_label() -> Callable[..., np.ndarray]:
    """A uint8 label array with values in ``0..num_classes-1``, ``SHAPE`` by default."""
    return _label


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Write an MSD data set: ``n_train`` labelled cases, ``n_test`` labelled test cases, and ``spec`` extras.

    The returned factory takes ``n_train``, ``n_test`` and ``extra`` (keys merged into ``dataset.json``, paths given
    as in MSD, relative with ``./``); images for any ``./imagesTs/…`` or ``./imagesUn/…`` path listed in ``extra``
    are written too.
    """

    def make(n_train: int = 4, n_test: int = 0, extra: dict[str, Any] | None = None) -> Path:
        root = tmp_path / "msd"
        spec: dict[str, Any] = {"name": "tiny", "training": [], "test": []}
        for i in range(n_train):
            spec["training"].append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
        for i in range(n_test):
            spec["test"].append({"image": f"./imagesTs/test_{i}.nii.gz", "label": f"./labelsTs/test_{i}.nii.gz"})
        spec.update(extra or {})
        for key in ("training", "test", "validation", "unlabeled", "unlabelled"):
            for entry in spec.get(key, []):
                entries = entry.items() if isinstance(entry, dict) else [("image", entry)]
                for role, rel in entries:
                    seed = zlib.crc32(rel.encode())  # a distinct image per path: the lists must not share content
                    data = _label(seed) if role == "label" else _image(seed)
                    _write(root / rel, data)
        root.mkdir(parents=True, exist_ok=True)
        (root / "dataset.json").write_text(json.dumps(spec, indent=2))
        return root

    return make


@pytest.fixture
def bpl_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Write a BPL data set with ``n_labelled``, ``n_unlabelled`` and ``n_test`` cases in format ``suffix``."""

    def make(n_labelled: int = 3, n_unlabelled: int = 2, n_test: int = 1, suffix: str = ".nii.gz") -> Path:
        root = tmp_path / "bpl"
        for i in range(n_labelled):
            _write(root / "labelled" / "imgs" / f"case_{i}{suffix}", _image(i))
            _write(root / "labelled" / "lbls" / f"case_{i}{suffix}", _label(i))
        for i in range(n_unlabelled):
            _write(root / "unlabelled" / "imgs" / f"un_{i}{suffix}", _image(100 + i))
        for i in range(n_test):
            _write(root / "test" / "imgs" / f"test_{i}{suffix}", _image(200 + i))
            _write(root / "test" / "lbls" / f"test_{i}{suffix}", _label(200 + i))
        return root

    return make


@pytest.fixture
def write_h5() -> Callable[..., str]:
    """Write an ``.h5`` holding ``image`` and ``label`` datasets (or the given ``datasets``); returns its path."""

    def make(path: Path, seed: int = 0, datasets: dict[str, np.ndarray] | None = None) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        content = datasets if datasets is not None else {"image": _image(seed), "label": _label(seed, num_classes=2)}
        with h5py.File(path, "w") as f:
            for key, value in content.items():
                f.create_dataset(key, data=value)
        return str(path)

    return make


@pytest.fixture
def la_h5_dataset(tmp_path: Path, write_h5: Callable[..., str]) -> Callable[..., Path]:
    """Write an SSL4MIS LA data set: ``<id>/mri_norm2.h5`` cases named in ``train.list`` and ``test.list``."""

    def make(n_train: int = 4, n_test: int = 2) -> Path:
        root = tmp_path / "LA"
        train_ids = [f"TRAIN{i:02d}" for i in range(n_train)]
        test_ids = [f"TEST{i:02d}" for i in range(n_test)]
        for seed, case_id in enumerate(train_ids + test_ids):
            write_h5(root / case_id / "mri_norm2.h5", seed=seed)
        (root / "train.list").write_text("\n".join(train_ids) + "\n")
        (root / "test.list").write_text("\n".join(test_ids) + "\n")
        return root

    return make
