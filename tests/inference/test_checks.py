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
    assert "ends early" in problems[3]  # the gzip stream check names a truncated .nii.gz (semiseg.data.files)


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


@pytest.mark.parametrize("module", ["semiseg.inference.checks", "semiseg.inference.provenance", "semiseg.files",
                                    "semiseg.inference.spacing", "semiseg.inference.saving",
                                    "semiseg.bundle_checks", "semiseg.errors"])
def test_ships_in_a_bundle_zip(module: str) -> None:
    """Only torch/MONAI/numpy/stdlib imports and relative semiseg imports: package_bundles.py accepts it."""
    spec = importlib.util.spec_from_file_location("package_bundles", REPO / "scripts" / "package_bundles.py")
    package_bundles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(package_bundles)  # type: ignore[union-attr]
    assert module in package_bundles.collect_modules([module])


def test_a_folder_is_searched_with_its_subfolders_files_first_label_folders_skipped(tmp_path: Path, caplog) -> None:
    for rel in ("b.nii.gz", "sub_2/c.nii", "sub_10/d.nii.gz", "sub_2/deeper/e.nii.gz", "a.nii.gz",
                "labelsTr/x.nii.gz", ".hidden/y.nii.gz"):
        _save(tmp_path / rel, _volume())
    with caplog.at_level("INFO"):
        found = [str(Path(p).relative_to(tmp_path)) for p in find_images(tmp_path)]
    assert found == ["a.nii.gz", "b.nii.gz", "sub_2/c.nii", "sub_2/deeper/e.nii.gz", "sub_10/d.nii.gz"]
    assert f"skipped the label folders {tmp_path / 'labelsTr'}" in caplog.text


def test_a_folder_of_subfolders_is_never_called_empty(tmp_path: Path) -> None:
    _save(tmp_path / "site" / "case.nii.gz", _volume())
    assert find_images(tmp_path) == [str(tmp_path / "site" / "case.nii.gz")]
    (tmp_path / "site" / "case.nii.gz").unlink()
    (tmp_path / "other").mkdir()
    with pytest.raises(DataValidationError, match=r"in inference input folder \S+: it holds 2 subfolders, without "
                                                  r"any file; pass --dataset_dir"):
        find_images(tmp_path)
    (tmp_path / "other" / "notes.txt").write_text("x")
    _save(tmp_path / "labels" / "case.nii.gz", _volume())
    with pytest.raises(DataValidationError, match=r": it holds 1 other files in it and its 2 subfolders, e\.g\. "
                                                  r"other/notes\.txt; the label folders labels were skipped"):
        find_images(tmp_path)


def test_links_to_missing_files_are_named(tmp_path: Path) -> None:
    _save(tmp_path / "good.nii.gz", _volume())
    (tmp_path / "gone.nii.gz").symlink_to(tmp_path / "deleted.nii.gz")
    (tmp_path / "notes.txt").symlink_to(tmp_path / "deleted.txt")  # not an image: not read, not reported
    with pytest.raises(DataValidationError, match=rf"inference input {tmp_path / 'gone.nii.gz'} is a link to "
                                                  rf"{tmp_path / 'deleted.nii.gz'}, which does not exist"):
        find_images(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"test": ["gone.nii.gz"]}))
    with pytest.raises(DataValidationError, match=r"test\[0\] names \S+gone\.nii\.gz, a link to \S+, which does not"):
        find_images(tmp_path)


def test_output_names_are_flat_where_unique_and_keep_their_folders_where_not(tmp_path: Path) -> None:
    from semiseg.inference.checks import output_names

    paths = [str(tmp_path / p) for p in ("siteA/p1.nii.gz", "siteB/x/p1.nii", "q.nii.gz", "siteA/P2.nii", "p2.nii.gz")]
    assert output_names(paths) == {paths[0]: "siteA/p1", paths[1]: "siteB/x/p1", paths[2]: "q",
                                   paths[3]: "siteA/P2", paths[4]: "p2"}  # P2 and p2 clash where case is ignored
    same = [str(tmp_path / "case.nii"), str(tmp_path / "case.nii.gz")]
    with pytest.raises(DataValidationError, match=rf"inference inputs {same[0]} and {same[1]} would both be written "
                                                  r"as case_seg\.nii\.gz"):
        output_names(same)


def test_inputs_are_named_for_save_image_from_the_checked_list(tmp_path: Path) -> None:
    from semiseg.inference.checks import case_output_name

    a, b = _save(tmp_path / "siteA" / "p1.nii.gz", _volume()), _save(tmp_path / "siteB" / "p1.nii.gz", _volume())
    flat = _save(tmp_path / "siteB" / "a.b.nii.gz", _volume())
    inference_images(tmp_path)
    assert case_output_name({"filename_or_obj": str(a), "patch_index": None}) == {"subject": "/siteA/p1.nii.gz",
                                                                                  "idx": None}
    assert case_output_name({"filename_or_obj": str(b)})["subject"] == "/siteB/p1.nii.gz"
    assert case_output_name({"filename_or_obj": str(flat)})["subject"] == "a.b.nii.gz"
    assert case_output_name({"filename_or_obj": "/elsewhere/new.nii.gz"})["subject"] == "new.nii.gz"  # MONAI Label


def test_an_input_far_from_the_training_spacing_gets_a_one_line_warning(tmp_path: Path, caplog) -> None:
    record = tmp_path / "model.json"
    record.write_text(json.dumps({"training_spacing_mm": [1.5, 1.5, 1.0]}))
    _save(tmp_path / "images" / "near.nii.gz", _volume())  # 1.5 x 1.5 x 2.0: within a factor of 2
    far = tmp_path / "images" / "far.nii.gz"
    far.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(_volume(), np.diag([0.5, 1.5, 2.0, 1.0])), str(far))
    with caplog.at_level("WARNING"):
        assert len(inference_images(tmp_path / "images", training_record=record)) == 2
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert lines == [f"image {far} has voxel spacing 0.5 x 1.5 x 2 mm, more than 2x off the training spacing "
                     f"1.5 x 1.5 x 1 mm ({record}): its segmentation may be poor; resample it to the training "
                     "spacing."]
    caplog.clear()
    with caplog.at_level("WARNING"):
        inference_images(tmp_path / "images", training_record=tmp_path / "none.json")  # no record: no comparison
    assert not caplog.records


def test_ras_spacing_follows_the_axes_an_orientation_to_ras_gives() -> None:
    from semiseg.inference.spacing import ras_spacing, spacing_mismatch

    assert ras_spacing(np.diag([1.0, 2.0, 3.0, 1.0])) == (1.0, 2.0, 3.0)
    permuted = np.array([[0, 0, -3.0, 0], [2.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # voxel axes S, R, A
    assert ras_spacing(permuted) == (3.0, 2.0, 1.0)
    assert spacing_mismatch((1.0, 1.0, 2.1), (1.0, 1.0, 1.0)) and spacing_mismatch((0.49, 1, 1), (1, 1, 1))
    assert not spacing_mismatch((2.0, 0.5, 1.0), (1.0, 1.0, 1.0))
