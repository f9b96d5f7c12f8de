"""The four lists of load_datalist: validation taken from the labelled cases, no file or image content in two lists,
and the bundle configs that validate on the validation list and evaluate on the test list."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.handlers import ValidationHandler

import semiseg.data.splits
from semiseg.data import DataValidationError, find_shared_files, load_datalist

REPO = Path(__file__).resolve().parents[2]


def _images(items: list[dict[str, str]]) -> list[str]:
    return [Path(item["image"]).name for item in items]


# ------------------------------------------------------------------------------------------------------ validation


def test_validation_is_the_last_labelled_cases_not_selected(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=5, n_unlabelled=1), num_labelled=2, num_val=2)
    assert _images(datalist["validation"]) == ["case_3.nii.gz", "case_4.nii.gz"]


def test_validation_items_keep_their_labels(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=3, n_unlabelled=0)
    datalist = load_datalist(root, num_labelled=1, num_val=1)
    image, label = root / "labelled" / "imgs" / "case_2.nii.gz", root / "labelled" / "lbls" / "case_2.nii.gz"
    assert datalist["validation"] == [{"image": str(image), "label": str(label)}]


def test_validation_cases_are_removed_from_unlabelled(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=5, n_unlabelled=1), num_labelled=2, num_val=2)
    assert _images(datalist["unlabelled"]) == ["case_2.nii.gz", "un_0.nii.gz"]


def test_validation_does_not_change_with_the_labelled_budget(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=6, n_unlabelled=0)
    budgets = [load_datalist(root, num_labelled=k, num_val=2)["validation"] for k in (1, 2, 4)]
    assert budgets[0] == budgets[1] == budgets[2]


def test_validation_never_takes_test_cases(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=3, n_test=2)
    datalist = load_datalist(root, num_labelled=1, num_val=2)
    assert _images(datalist["validation"]) == ["case_1.nii.gz", "case_2.nii.gz"]
    assert _images(datalist["test"]) == ["test_0.nii.gz", "test_1.nii.gz"]


def test_num_val_zero_gives_an_empty_validation_list(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=3), num_labelled=2, num_val=0)
    assert datalist["validation"] == [] and _images(datalist["unlabelled"])[0] == "case_2.nii.gz"


def test_num_val_defaults_to_zero_in_the_library(bpl_dataset: Callable[..., Path]) -> None:
    assert load_datalist(bpl_dataset(n_labelled=3), num_labelled=2)["validation"] == []


def test_num_val_with_labelled_ids_takes_the_last_unselected(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=5, n_unlabelled=0), labelled_ids=["case_4"], num_val=2)
    assert _images(datalist["validation"]) == ["case_2.nii.gz", "case_3.nii.gz"]


def test_num_val_without_num_labelled_keeps_the_rest_labelled(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=4, n_unlabelled=0), num_val=1)
    assert _images(datalist["labelled"]) == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]


def test_not_enough_labelled_cases_for_budget_and_validation(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=4)
    expected = (
        f"num_labelled=3 labelled plus num_val=2 validation cases need 5 labelled cases, but data set {root} "
        "(layout 'bpl') has only 4"
    )
    with pytest.raises(DataValidationError, match=re.escape(expected)):
        load_datalist(root, num_labelled=3, num_val=2)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_num_val(bpl_dataset: Callable[..., Path], value: object) -> None:
    with pytest.raises(DataValidationError, match="num_val must be"):
        load_datalist(bpl_dataset(), num_labelled=1, num_val=value)  # type: ignore[arg-type]


def test_validation_files_are_checked(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=3, n_unlabelled=0)
    label = root / "labelled" / "lbls" / "case_2.nii.gz"  # the validation case's label
    label.write_bytes(b"not a volume")
    with pytest.raises(DataValidationError, match=re.escape(f"cannot read label {label}")):
        load_datalist(root, num_labelled=1, num_val=1)


def test_in_channels_is_checked_on_every_list(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=1, n_test=1)
    with pytest.raises(DataValidationError, match="4 problems") as info:
        load_datalist(root, num_labelled=1, num_val=1, in_channels=2)
    assert all("but the network takes in_channels=2" in problem for problem in info.value.problems)


def test_unlabelled_image_contents_are_checked(
    bpl_dataset: Callable[..., Path], write_volume: Callable[[Path, np.ndarray], str]
) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=1)
    image = np.zeros((8, 8, 6), dtype=np.float32)
    image[0, 0, 0] = np.nan
    path = write_volume(root / "unlabelled" / "imgs" / "un_0.nii.gz", image)
    with pytest.raises(DataValidationError, match=re.escape(f"image {path} has 1 NaN and 0 infinite voxels")):
        load_datalist(root, num_labelled=1)


# -------------------------------------------------------------------------------------------------------- disjoint


def test_msd_unlabeled_list_holding_a_test_image_fails(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2, n_test=1, extra={"unlabeled": ["./imagesTs/test_0.nii.gz"]})
    image = root / "imagesTs" / "test_0.nii.gz"
    expected = f"file {image} is in more than one list: unlabelled image {image}; test image {image}"
    with pytest.raises(DataValidationError, match=re.escape(expected)):
        load_datalist(root, num_labelled=1)


def test_bpl_unlabelled_copy_of_a_test_image_fails(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=1, n_test=1)
    test_image, copy = root / "test" / "imgs" / "test_0.nii.gz", root / "unlabelled" / "imgs" / "un_9.nii.gz"
    shutil.copy(test_image, copy)
    expected = r"identical contents \(sha256 [0-9a-f]{16}\.\.\.\) are in more than one list: unlabelled image " + (
        re.escape(f"{copy}; test image {test_image}")
    )
    with pytest.raises(DataValidationError, match=expected):
        load_datalist(root, num_labelled=1)


def test_symlink_to_a_test_image_fails(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=0, n_test=1)
    test_image, link = root / "test" / "imgs" / "test_0.nii.gz", root / "unlabelled" / "imgs" / "un_0.nii.gz"
    link.parent.mkdir(parents=True)
    os.symlink(test_image, link)
    with pytest.raises(DataValidationError, match=re.escape(f"file {test_image} is in more than one list")):
        load_datalist(root, num_labelled=1, validate=False)


def test_msd_validation_key_repeating_a_training_case_fails(msd_dataset: Callable[..., Path]) -> None:
    case = {"image": "./imagesTr/case_1.nii.gz", "label": "./labelsTr/case_1.nii.gz"}
    root = msd_dataset(n_train=3, extra={"validation": [case]})
    image = root / "imagesTr" / "case_1.nii.gz"
    expected = f"file {image} is in more than one list: unlabelled image {image}; test image {image}"
    with pytest.raises(DataValidationError, match=re.escape(expected)):
        load_datalist(root, num_labelled=1)


def test_a_label_file_shared_with_the_test_list_fails(msd_dataset: Callable[..., Path]) -> None:
    test_case = {"image": "./imagesTs/test_0.nii.gz", "label": "./labelsTr/case_0.nii.gz"}
    root = msd_dataset(n_train=2, extra={"test": [test_case]})
    label = root / "labelsTr" / "case_0.nii.gz"
    expected = f"file {label} is in more than one list: labelled label {label}; test label {label}"
    with pytest.raises(DataValidationError, match=re.escape(expected)):
        load_datalist(root, num_labelled=1)


def test_la_h5_case_in_train_and_test_list_fails(la_h5_dataset: Callable[..., Path]) -> None:
    root = la_h5_dataset(n_train=3, n_test=1)
    (root / "test.list").write_text("TEST00\nTRAIN00\n")
    h5 = root / "TRAIN00" / "mri_norm2.h5"
    expected = f"file {h5} is in more than one list: labelled image {h5}::image; test image {h5}::image"
    with pytest.raises(DataValidationError, match=re.escape(expected)):
        load_datalist(root, num_labelled=1)


def test_validation_copy_of_a_test_image_fails(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=3, n_unlabelled=0, n_test=1)
    shutil.copy(root / "test" / "imgs" / "test_0.nii.gz", root / "labelled" / "imgs" / "case_2.nii.gz")
    with pytest.raises(DataValidationError, match=r"identical contents .* validation image .*case_2\.nii\.gz; test"):
        load_datalist(root, num_labelled=1, num_val=1)


def test_identical_label_contents_in_two_lists_are_allowed(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=0, n_test=1)
    shutil.copy(root / "labelled" / "lbls" / "case_0.nii.gz", root / "test" / "lbls" / "test_0.nii.gz")
    assert len(load_datalist(root, num_labelled=1, num_val=1)["test"]) == 1


def test_image_and_label_in_one_h5_file_within_a_list_are_allowed(la_h5_dataset: Callable[..., Path]) -> None:
    assert len(load_datalist(la_h5_dataset(n_train=3, n_test=1), num_labelled=1, num_val=1)["validation"]) == 1


def _distinct_sizes(datalist: dict[str, list[dict[str, str]]]) -> None:
    """Pad every image to its own size with bytes after its gzip trailer (never read by the content check)."""
    for index, item in enumerate(item for items in datalist.values() for item in items):
        with open(item["image"], "ab") as f:
            f.write(b"\0" * (10_000 + 100 * index - os.path.getsize(item["image"])))


def test_only_images_whose_size_matches_another_list_are_hashed_once(
    bpl_dataset: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=2, n_test=2)
    _distinct_sizes(load_datalist(root, num_labelled=1, validate=False))
    test_image, copy = root / "test" / "imgs" / "test_1.nii.gz", root / "unlabelled" / "imgs" / "un_9.nii.gz"
    shutil.copy(test_image, copy)
    hashed: list[str] = []
    real_sha256 = semiseg.data.splits._sha256

    def counting(path: str) -> str | None:
        hashed.append(path)
        return real_sha256(path)

    monkeypatch.setattr(semiseg.data.splits, "_sha256", counting)
    assert len(find_shared_files(load_datalist(root, num_labelled=1, validate=False))) == 1
    assert sorted(hashed) == sorted([str(test_image), str(copy)])


def test_no_hashing_when_all_image_sizes_differ(
    bpl_dataset: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=2, n_unlabelled=1, n_test=1), num_labelled=1, validate=False)
    _distinct_sizes(datalist)
    monkeypatch.setattr(semiseg.data.splits, "_sha256", lambda path: pytest.fail(f"hashed {path}"))
    assert find_shared_files(datalist) == []


# ---------------------------------------------------------------------------------------------- bundle configs


@pytest.fixture
def tiny_msd(msd_dataset: Callable[..., Path]) -> Path:
    """5 training (2 labelled, 1 validation, 2 unlabelled) and 2 test cases."""
    return msd_dataset(n_train=5, n_test=2)


def _parser(tiny_msd: Path, *configs: str, **overrides: object) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / "mean_teacher" / "configs" / name) for name in configs])
    parser.update({"dataset_dir": str(tiny_msd), "num_labelled": 2, "num_val": 1, "num_workers": 0, **overrides})
    return parser


def test_training_validates_on_the_validation_list(tiny_msd: Path) -> None:
    data = _parser(tiny_msd, "train.json").get_parsed_content("validate#dataset#data")
    assert _images(data) == ["case_4.nii.gz"]


def test_evaluation_runs_on_the_test_list(tiny_msd: Path) -> None:
    data = _parser(tiny_msd, "train.json", "evaluate.json").get_parsed_content("validate#dataset#data")
    assert _images(data) == ["test_0.nii.gz", "test_1.nii.gz"]


def test_template_num_val_defaults_to_two() -> None:
    assert json.loads((REPO / "templates" / "bundle" / "configs" / "train.json").read_text())["num_val"] == 2


@pytest.mark.parametrize("num_val", [0, 1])
def test_validation_handler_only_with_validation_cases(tiny_msd: Path, num_val: int) -> None:
    handlers = _parser(tiny_msd, "train.json", num_val=num_val).get_parsed_content("train#handlers")
    assert sum(isinstance(h, ValidationHandler) for h in handlers) == num_val
