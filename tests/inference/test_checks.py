"""semiseg.inference.checks: the inference inputs are found in a plain folder or imagesTs/, and every bad image fails
with its name before anything is written (docs/architecture.md §5). The same checks run per bundle from the released
zip with MONAI alone in tests/test_bad_inputs.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from semiseg.data import DataValidationError
from semiseg.inference import ReplaceNonFinited, find_images, inference_images
from tests.bundles.conftest import REPO

SHAPE = (10, 9, 8)


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
    return path


def _volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_a_plain_folder_of_nifti_images_in_natural_order(tmp_path: Path) -> None:
    for name in ("case_10.nii.gz", "case_2.nii", "case_1.nii.gz"):
        _save(tmp_path / name, _volume())
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub.nii.gz").mkdir()
    assert [Path(p).name for p in find_images(tmp_path)] == ["case_1.nii.gz", "case_2.nii", "case_10.nii.gz"]
    assert inference_images(tmp_path) == [{"image": str(tmp_path / n)} for n in
                                          ("case_1.nii.gz", "case_2.nii", "case_10.nii.gz")]


def test_images_ts_of_a_data_set_folder_comes_first(tmp_path: Path) -> None:
    _save(tmp_path / "imagesTr" / "case_0.nii.gz", _volume())
    _save(tmp_path / "loose.nii.gz", _volume())
    test = _save(tmp_path / "imagesTs" / "test_0.nii.gz", _volume())
    assert find_images(tmp_path) == [str(test)]


def test_a_single_image_file(tmp_path: Path) -> None:
    image = _save(tmp_path / "one.nii.gz", _volume())
    _save(tmp_path / "other.nii.gz", _volume(1))
    assert inference_images(image) == [{"image": str(image)}]


def test_the_test_list_of_dataset_json_comes_before_images_ts(tmp_path: Path) -> None:
    first = _save(tmp_path / "imagesTs" / "b.nii.gz", _volume())
    second = _save(tmp_path / "elsewhere" / "a.nii.gz", _volume())
    _save(tmp_path / "imagesTs" / "not_listed.nii.gz", _volume())
    spec = {"test": ["./imagesTs/b.nii.gz", {"image": "elsewhere/a.nii.gz", "label": "x"}]}  # MSD strings or items
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    assert find_images(tmp_path) == [str(first), str(second)]  # the list's order, not the file names'
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))  # no test list: imagesTs/ as before
    assert [Path(p).name for p in find_images(tmp_path)] == ["b.nii.gz", "not_listed.nii.gz"]
    (tmp_path / "dataset.json").write_text(json.dumps({"test": ["./imagesTs/gone.nii.gz", 3]}))
    with pytest.raises(DataValidationError) as info:
        find_images(tmp_path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [
        f"test[0] names {tmp_path / 'imagesTs' / 'gone.nii.gz'}, which does not exist",
        "test[1] is 3, not an image path or {'image': path}",
    ]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root / "nowhere", r"inference input folder \S+nowhere does not exist: pass --dataset_dir"),
        (lambda root: np.save(root / "x.npy", _volume()) or root / "x.npy",
         r"inference input \S+x\.npy is a file, not a NIfTI image or a folder"),
        (lambda root: root, r"no NIfTI images \(\.nii\.gz, \.nii\) in inference input folder \S+: it is empty"),
        (lambda root: (root / "imagesTs").mkdir() or root,
         r"in inference input folder \S+imagesTs \(the imagesTs/ of \S+\): it is empty"),
        (lambda root: np.save(root / "a.npy", _volume()) or root, r": it holds 1 other files, e.g\. a\.npy"),
    ],
    ids=["missing", "a-file", "empty", "empty-imagesTs", "other-files"],
)
def test_folders_without_images_fail_naming_the_folder(tmp_path: Path, setup, message: str) -> None:
    with pytest.raises(DataValidationError, match=message):
        inference_images(setup(tmp_path))


def test_bad_images_fail_with_their_name_and_problem(tmp_path: Path) -> None:
    good = _save(tmp_path / "a_good.nii.gz", _volume())
    nan = _volume(1)
    nan[0, 0, :3] = np.nan
    nan[1, 1, 1] = np.inf
    _save(tmp_path / "b_nan.nii.gz", nan)
    _save(tmp_path / "c_2d.nii.gz", _volume(2, SHAPE[:2]))
    _save(tmp_path / "d_2ch.nii.gz", _volume(3, (*SHAPE, 2)))
    truncated = _save(tmp_path / "e_cut.nii.gz", _volume(4))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataValidationError) as info:
        inference_images(tmp_path)
    problems = info.value.problems
    assert len(problems) == 4 and str(good) not in " ".join(problems)
    assert problems[0].startswith(f"image {tmp_path / 'b_nan.nii.gz'} has 3 NaN and 1 infinite voxels (of 720)")
    assert "pass --nonfinite_voxels replace" in problems[0]
    assert problems[1].startswith(f"image {tmp_path / 'c_2d.nii.gz'} has shape (10, 9), a 2-D array; expected a 3-D")
    assert problems[2].startswith(f"image {tmp_path / 'd_2ch.nii.gz'} has 2 channels (shape (10, 9, 8, 2)) but the "
                                  "network takes in_channels = 1")
    assert problems[3].startswith(f"cannot read image {tmp_path / 'e_cut.nii.gz'}: ")
    assert "truncated, corrupt or not NIfTI" in problems[3]


def test_channels_and_nonfinite_policy(tmp_path: Path) -> None:
    _save(tmp_path / "two.nii.gz", _volume(0, (*SHAPE, 2)))
    assert len(inference_images(tmp_path, in_channels=2)) == 1
    nan = _volume(1)
    nan[0, 0, 0] = np.nan
    _save(tmp_path / "two.nii.gz", nan)
    assert len(inference_images(tmp_path, nonfinite="replace")) == 1
    _save(tmp_path / "two.nii.gz", np.full(SHAPE, np.nan, np.float32))
    with pytest.raises(DataValidationError, match="it has no finite voxel at all"):
        inference_images(tmp_path, nonfinite="replace")
    with pytest.raises(ValueError, match="nonfinite_voxels must be one of"):
        inference_images(tmp_path, nonfinite="zero")


def test_replace_nonfinite_uses_the_smallest_finite_value() -> None:
    image = torch.tensor([[[[3.0, float("nan")], [float("inf"), -2.0]]]])
    out = ReplaceNonFinited("image")({"image": image})["image"]
    assert torch.equal(out, torch.tensor([[[[3.0, -2.0], [-2.0, -2.0]]]]))
    assert ReplaceNonFinited("image", enabled=False)({"image": image})["image"] is image
    finite = torch.ones(1, 2, 2, 2)
    assert ReplaceNonFinited("image")({"image": finite})["image"] is finite


@pytest.mark.parametrize("module", ["semiseg.inference.checks", "semiseg.inference.provenance",
                                    "semiseg.bundle_checks", "semiseg.errors"])
def test_ships_in_a_bundle_zip(module: str) -> None:
    """Only torch/MONAI/numpy/stdlib imports and relative semiseg imports: package_bundles.py accepts it."""
    spec = importlib.util.spec_from_file_location("package_bundles", REPO / "scripts" / "package_bundles.py")
    package_bundles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package_bundles)  # type: ignore[union-attr]
    assert module in package_bundles.collect_modules([module])
