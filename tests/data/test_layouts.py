"""load_datalist: every layout parses, the labelled split follows the config, bad data sets fail with the file."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from semiseg.data import DataValidationError, detect_layout, load_datalist


def _images(items: list[dict[str, str]]) -> list[str]:
    return [Path(item["image"]).name for item in items]


# ------------------------------------------------------------------------------------------------------------- msd


def test_msd_with_unlabeled_list(msd_dataset: Callable[..., Path]) -> None:
    unlabeled = ["./imagesUn/u_0.nii.gz", {"image": "imagesUn/u_1.nii.gz"}]
    root = msd_dataset(n_train=3, n_test=1, extra={"unlabeled": unlabeled})
    datalist = load_datalist(root, num_classes=3)
    assert datalist["labelled"][0] == {
        "image": str(root / "imagesTr" / "case_0.nii.gz"),
        "label": str(root / "labelsTr" / "case_0.nii.gz"),
    }
    assert _images(datalist["labelled"]) == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"]
    assert datalist["unlabelled"] == [
        {"image": str(root / "imagesUn" / "u_0.nii.gz")},
        {"image": str(root / "imagesUn" / "u_1.nii.gz")},
    ]
    assert _images(datalist["test"]) == ["test_0.nii.gz"]


def test_msd_accepts_british_unlabelled_key(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2, extra={"unlabelled": ["./imagesUn/u_0.nii.gz"]})
    assert _images(load_datalist(root)["unlabelled"]) == ["u_0.nii.gz"]


def test_msd_string_test_entries_become_unlabelled(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2, extra={"test": ["./imagesTs/t_0.nii.gz", "./imagesTs/t_1.nii.gz"]})
    datalist = load_datalist(root)
    assert _images(datalist["unlabelled"]) == ["t_0.nii.gz", "t_1.nii.gz"]
    assert datalist["test"] == []


def test_msd_string_test_entries_ignored_when_unlabeled_list_exists(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2, extra={"test": ["./imagesTs/t_0.nii.gz"], "unlabeled": ["./imagesUn/u_0.nii.gz"]})
    assert _images(load_datalist(root)["unlabelled"]) == ["u_0.nii.gz"]


def test_msd_validation_list_appended_to_test(msd_dataset: Callable[..., Path]) -> None:
    extra = {"validation": [{"image": "./imagesVa/v_0.nii.gz", "label": "./labelsVa/v_0.nii.gz"}]}
    root = msd_dataset(n_train=2, n_test=1, extra=extra)
    assert _images(load_datalist(root)["test"]) == ["test_0.nii.gz", "v_0.nii.gz"]


def test_msd_reads_nrrd(
    tmp_path: Path, make_image: Callable[..., np.ndarray], make_label: Callable[..., np.ndarray]
) -> None:
    import itk

    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "img.nrrd", "label": "lbl.nrrd"}]}))
    itk.imwrite(itk.image_from_array(make_image(0)), str(tmp_path / "img.nrrd"))
    itk.imwrite(itk.image_from_array(make_label(0)), str(tmp_path / "lbl.nrrd"))
    assert _images(load_datalist(tmp_path, num_classes=3)["labelled"]) == ["img.nrrd"]


def test_msd_training_entry_without_label(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=1, extra={"training": [{"image": "./imagesTr/case_0.nii.gz"}]})
    with pytest.raises(DataValidationError, match=r"dataset\.json.*case_0\.nii\.gz.*no 'label'"):
        load_datalist(root)


def test_msd_missing_image_file(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2)
    (root / "imagesTr" / "case_1.nii.gz").unlink()
    missing = root / "imagesTr" / "case_1.nii.gz"
    with pytest.raises(DataValidationError, match=re.escape(f"image {missing} does not exist")):
        load_datalist(root)


def test_msd_missing_label_file(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=2)
    (root / "labelsTr" / "case_0.nii.gz").unlink()
    missing = root / "labelsTr" / "case_0.nii.gz"
    with pytest.raises(DataValidationError, match=re.escape(f"label {missing} does not exist")):
        load_datalist(root)


def test_msd_invalid_json(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataValidationError, match=re.escape(f"cannot read {tmp_path / 'dataset.json'}")):
        load_datalist(tmp_path)


# ------------------------------------------------------------------------------------------------------------- bpl


@pytest.mark.parametrize("suffix", [".nii.gz", ".npy"])
def test_bpl_parses(bpl_dataset: Callable[..., Path], suffix: str) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=2, n_test=1, suffix=suffix)
    datalist = load_datalist(root, num_classes=3)
    assert datalist["labelled"][1] == {
        "image": str(root / "labelled" / "imgs" / f"case_1{suffix}"),
        "label": str(root / "labelled" / "lbls" / f"case_1{suffix}"),
    }
    assert _images(datalist["unlabelled"]) == [f"un_0{suffix}", f"un_1{suffix}"]
    image, label = root / "test" / "imgs" / f"test_0{suffix}", root / "test" / "lbls" / f"test_0{suffix}"
    assert datalist["test"] == [{"image": str(image), "label": str(label)}]


def test_bpl_natural_order(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=11, n_unlabelled=0, n_test=0)
    names = _images(load_datalist(root, validate=False)["labelled"])
    assert names[:3] == ["case_0.nii.gz", "case_1.nii.gz", "case_2.nii.gz"] and names[-1] == "case_10.nii.gz"


def test_bpl_unmatched_image_and_label(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2)
    (root / "labelled" / "lbls" / "case_1.nii.gz").rename(root / "labelled" / "lbls" / "case_9.nii.gz")
    with pytest.raises(DataValidationError) as info:
        load_datalist(root)
    message = str(info.value)
    assert f"image {root / 'labelled' / 'imgs' / 'case_1.nii.gz'} has no label" in message
    assert f"label {root / 'labelled' / 'lbls' / 'case_9.nii.gz'} has no image" in message


# ----------------------------------------------------------------------------------------------------------- la_h5


def test_la_h5_parses(la_h5_dataset: Callable[..., Path]) -> None:
    root = la_h5_dataset(n_train=3, n_test=2)
    datalist = load_datalist(root, num_classes=2)
    h5 = root / "TRAIN00" / "mri_norm2.h5"
    assert datalist["labelled"][0] == {"image": f"{h5}::image", "label": f"{h5}::label"}
    assert len(datalist["labelled"]) == 3 and datalist["unlabelled"] == []
    assert [Path(i["image"].split("::")[0]).parent.name for i in datalist["test"]] == ["TEST00", "TEST01"]


def test_la_h5_accepts_flat_h5_in_data_folder(tmp_path: Path, write_h5: Callable[..., str]) -> None:
    write_h5(tmp_path / "data" / "case_a.h5")
    (tmp_path / "train.list").write_text("case_a\n")
    assert load_datalist(tmp_path)["labelled"] == [
        {"image": f"{tmp_path / 'data' / 'case_a.h5'}::image", "label": f"{tmp_path / 'data' / 'case_a.h5'}::label"}
    ]


def test_la_h5_missing_case_file(la_h5_dataset: Callable[..., Path]) -> None:
    root = la_h5_dataset(n_train=2, n_test=0)
    (root / "TRAIN01" / "mri_norm2.h5").unlink()
    with pytest.raises(DataValidationError, match=r"case 'TRAIN01' of .*train\.list has no \.h5 file"):
        load_datalist(root)


def test_la_h5_missing_label_dataset(
    tmp_path: Path, write_h5: Callable[..., str], make_image: Callable[..., np.ndarray]
) -> None:
    h5 = write_h5(tmp_path / "c1" / "mri_norm2.h5", datasets={"image": make_image(0)})
    (tmp_path / "train.list").write_text("c1\n")
    with pytest.raises(DataValidationError, match=rf"{re.escape(h5)}::label.*no dataset 'label'"):
        load_datalist(tmp_path)


# ------------------------------------------------------------------------------------------------------------ split


def test_split_by_count_moves_the_rest_to_unlabelled(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=4, n_unlabelled=1)
    datalist = load_datalist(root, num_labelled=2)
    assert _images(datalist["labelled"]) == ["case_0.nii.gz", "case_1.nii.gz"]
    assert datalist["unlabelled"] == [
        {"image": str(root / "labelled" / "imgs" / "case_2.nii.gz")},
        {"image": str(root / "labelled" / "imgs" / "case_3.nii.gz")},
        {"image": str(root / "unlabelled" / "imgs" / "un_0.nii.gz")},
    ]


def test_split_by_count_la_h5_takes_first_of_train_list(la_h5_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(la_h5_dataset(n_train=4, n_test=0), num_labelled=1)

    def case(item: dict[str, str]) -> str:
        return Path(item["image"].split("::")[0]).parent.name

    assert [case(i) for i in datalist["labelled"]] == ["TRAIN00"]
    assert [case(i) for i in datalist["unlabelled"]] == ["TRAIN01", "TRAIN02", "TRAIN03"]


def test_split_by_count_msd_uses_json_order(msd_dataset: Callable[..., Path]) -> None:
    root = msd_dataset(n_train=3, extra={"unlabeled": ["./imagesUn/u_0.nii.gz"]})
    datalist = load_datalist(root, num_labelled=1)
    assert _images(datalist["labelled"]) == ["case_0.nii.gz"]
    assert _images(datalist["unlabelled"]) == ["case_1.nii.gz", "case_2.nii.gz", "u_0.nii.gz"]


@pytest.mark.parametrize("ids", [["case_3", "case_1"], ["case_1.nii.gz", "case_3.nii.gz"]])
def test_split_by_ids(bpl_dataset: Callable[..., Path], ids: list[str]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=4, n_unlabelled=0), labelled_ids=ids)
    assert _images(datalist["labelled"]) == ["case_1.nii.gz", "case_3.nii.gz"]
    assert _images(datalist["unlabelled"]) == ["case_0.nii.gz", "case_2.nii.gz"]


def test_split_by_unknown_id(bpl_dataset: Callable[..., Path]) -> None:
    with pytest.raises(DataValidationError, match=r"labelled_ids \['nope'\] are not labelled cases"):
        load_datalist(bpl_dataset(n_labelled=2), labelled_ids=["nope"])


def test_num_labelled_too_large(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=3)
    expected = rf"num_labelled=5 but data set {re.escape(str(root))} .* has only 3 labelled cases"
    with pytest.raises(DataValidationError, match=expected):
        load_datalist(root, num_labelled=5)


def test_num_labelled_below_one(bpl_dataset: Callable[..., Path]) -> None:
    with pytest.raises(DataValidationError, match="num_labelled must be at least 1, got 0"):
        load_datalist(bpl_dataset(), num_labelled=0)


def test_require_unlabelled_with_none(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset(n_labelled=2, n_unlabelled=0)
    looked = re.escape(str(root / "unlabelled" / "imgs"))
    with pytest.raises(DataValidationError, match=rf"needs unlabelled data.*looked in {looked}"):
        load_datalist(root, require_unlabelled=True)


def test_require_unlabelled_satisfied_by_split(bpl_dataset: Callable[..., Path]) -> None:
    datalist = load_datalist(bpl_dataset(n_labelled=2, n_unlabelled=0), num_labelled=1, require_unlabelled=True)
    assert _images(datalist["unlabelled"]) == ["case_1.nii.gz"]


# ----------------------------------------------------------------------------------------------------------- layout


def test_unknown_layout_names_the_markers(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"cannot tell the layout .*dataset\.json.*labelled/.*train\.list"):
        load_datalist(tmp_path)


def test_unknown_layout_name(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"unknown layout 'nifti'"):
        load_datalist(tmp_path, layout="nifti")


def test_explicit_layout_without_its_marker(tmp_path: Path) -> None:
    marker = re.escape(str(tmp_path / "train.list"))
    with pytest.raises(DataValidationError, match=rf"not in layout 'la_h5': {marker} does not exist"):
        load_datalist(tmp_path, layout="la_h5")


def test_missing_dataset_dir(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=re.escape(f"{tmp_path / 'nowhere'} does not exist")):
        load_datalist(tmp_path / "nowhere")


def test_detect_layout_prefers_dataset_json(bpl_dataset: Callable[..., Path]) -> None:
    root = bpl_dataset()
    assert detect_layout(str(root)) == "bpl"
    (root / "dataset.json").write_text("{}")
    assert detect_layout(str(root)) == "msd"
