"""The shared training recipe's settings (``intensity_norm``, ``label_crop``, ``rot90``) in semiseg.data.transforms."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import RandCropByPosNegLabeld, RandRotate90d, RandSpatialCropSamplesd
from monai.utils import set_determinism

from semiseg.data.transforms import (
    eval_transforms,
    intensity_transforms,
    labelled_train_transforms,
    unlabelled_train_transforms,
)


@pytest.fixture
def case(tmp_path: Path) -> dict[str, str]:
    """One 16^3 case: intensities 100 + 20 N(0, 1), a 4^3 foreground cube in a corner."""
    rng = np.random.default_rng(0)
    image = (100 + 20 * rng.normal(size=(16, 16, 16))).astype(np.float32)
    label = np.zeros((16, 16, 16), np.uint8)
    label[:4, :4, :4] = 1
    paths = {}
    for key, array in (("image", image), ("label", label)):
        paths[key] = str(tmp_path / f"{key}.nii.gz")
        nib.save(nib.Nifti1Image(array, np.eye(4)), paths[key])
    return paths


def test_zscore_gives_zero_mean_unit_std(case: dict[str, str]) -> None:
    image = eval_transforms(with_label=False, intensity_norm="zscore")({"image": case["image"]})["image"]
    assert abs(float(image.mean())) < 1e-5
    assert float(image.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_percentile_scales_to_unit_range_and_none_keeps_intensities(case: dict[str, str]) -> None:
    scaled = eval_transforms(with_label=False, intensity_norm="percentile")({"image": case["image"]})["image"]
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    raw = eval_transforms(with_label=False, intensity_norm="none")({"image": case["image"]})["image"]
    assert torch.allclose(raw.as_tensor(), torch.as_tensor(nib.load(case["image"]).get_fdata()[None], dtype=raw.dtype))
    assert intensity_transforms("none") == []


def test_label_crop_picks_the_monai_crop() -> None:
    balanced = labelled_train_transforms([8, 8, 8], label_crop="balanced").transforms
    uniform = labelled_train_transforms([8, 8, 8], label_crop="uniform").transforms
    assert any(isinstance(t, RandCropByPosNegLabeld) for t in balanced)
    assert not any(isinstance(t, RandCropByPosNegLabeld) for t in uniform)
    assert any(isinstance(t, RandSpatialCropSamplesd) for t in uniform)


def test_uniform_crops_rarely_hold_the_corner_foreground(case: dict[str, str]) -> None:
    """A 4^3 cube in a 16^3 volume: balanced crops (pos = neg = 1) hold foreground in about half the draws or more,
    uniform 8^3 crops only when they start in the first 4 voxels of every axis ((4/9)^3 ~ 9%)."""
    set_determinism(0)
    counts = {}
    for mode in ("balanced", "uniform"):
        chain = labelled_train_transforms([8, 8, 8], num_samples=1, label_crop=mode, flip_prob=0.0)
        counts[mode] = sum(bool(chain(dict(case))[0]["label"].sum() > 0) for _ in range(200))
    set_determinism(None)
    assert counts["balanced"] >= 90
    assert counts["uniform"] <= 40


def test_rot90_turns_in_the_first_plane_with_uniform_quarters(case: dict[str, str]) -> None:
    chain = labelled_train_transforms([8, 8, 4], rot90=True, flip_prob=0.0)
    turns = [t for t in chain.transforms if isinstance(t, RandRotate90d)]
    assert len(turns) == 1
    rotate = turns[0]
    assert tuple(rotate.spatial_axes) == (0, 1) and rotate.max_k == 3
    assert rotate.prob == pytest.approx(0.75)  # k = 0 with 1/4, else 1, 2 or 3 quarters: uniform
    assert not any(isinstance(t, RandRotate90d) for t in labelled_train_transforms([8, 8, 4]).transforms)
    unlabelled = unlabelled_train_transforms([8, 8, 4], rot90="true").transforms
    assert any(isinstance(t, RandRotate90d) for t in unlabelled)
    unturned = unlabelled_train_transforms([8, 8, 4], rot90="false").transforms
    assert not any(isinstance(t, RandRotate90d) for t in unturned)


def test_rot90_turns_image_and_label_together(case: dict[str, str]) -> None:
    set_determinism(1)
    chain = labelled_train_transforms([16, 16, 16], num_samples=1, rot90=True, flip_prob=0.0, label_crop="uniform")
    reference = eval_transforms(intensity_norm="percentile")(dict(case))
    seen = set()
    for _ in range(40):
        item = chain(dict(case))[0]
        for k in range(4):
            if torch.equal(item["label"].as_tensor(), torch.rot90(reference["label"].as_tensor(), k, dims=(1, 2))):
                assert torch.allclose(
                    item["image"].as_tensor(), torch.rot90(reference["image"].as_tensor(), k, dims=(1, 2))
                )
                seen.add(k)
                break
        else:
            raise AssertionError("the label is not a quarter turn of the original in the first plane")
    set_determinism(None)
    assert seen == {0, 1, 2, 3}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"intensity_norm": "minmax"}, "intensity_norm"), ({"label_crop": "posneg"}, "label_crop")],
)
def test_unknown_values_name_the_setting(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=f"setting {name} must be one of"):
        labelled_train_transforms([8, 8, 8], **kwargs)


def test_rot90_needs_equal_first_two_sides() -> None:
    with pytest.raises(ValueError, match=r"rot90 .* roi_size\[0\] == roi_size\[1\]"):
        labelled_train_transforms([8, 6, 8], rot90=True)
    with pytest.raises(ValueError, match="rot90"):
        unlabelled_train_transforms([8, 6, 8], rot90="yes")
    labelled_train_transforms([8, 8, 6], rot90=True)  # the LA crop 112x112x80 has equal first sides
