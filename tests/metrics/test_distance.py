"""Surface distances in mm with the miss penalty (docs/architecture.md §5), checked against hand computations.

Structures are 2x2x2 cubes, so every voxel is a surface voxel and the distances are easy to compute by hand.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from monai.data import MetaTensor
from monai.data.utils import list_data_collate

from semiseg.metrics import (
    MillimetreHausdorffDistanceMetric,
    MillimetreSurfaceDistanceMetric,
    MissedStructureMetric,
    batch_spacing_mm,
    miss_penalty_mm,
    spacing_is_physical,
    structure_misses,
    voxel_spacing_mm,
)

SPACING = (1.5, 1.5, 3.0)
SHAPE = (8, 8, 8)
DIAGONAL = math.sqrt((8 * 1.5) ** 2 + (8 * 1.5) ** 2 + (8 * 3.0) ** 2)  # sqrt(864) = 29.39 mm


def _affine(spacing: tuple[float, ...]) -> torch.Tensor:
    return torch.diag(torch.tensor([*spacing, 1.0], dtype=torch.float64))


def _one_hot(
    cubes: dict[int, tuple[int, int, int]], spacing: tuple[float, ...] = SPACING, size: int = 2
) -> MetaTensor:
    """Channel-first one-hot ``(3, 8, 8, 8)`` label map with a ``size``^3 cube of class ``k`` at corner ``cubes[k]``."""
    labels = torch.zeros(SHAPE, dtype=torch.long)
    for k, (x, y, z) in cubes.items():
        labels[x : x + size, y : y + size, z : z + size] = k
    one_hot = torch.nn.functional.one_hot(labels, 3).permute(3, 0, 1, 2).float()
    return MetaTensor(one_hot, affine=_affine(spacing))


def test_shift_along_each_axis_gives_the_spacing_of_that_axis() -> None:
    label = _one_hot({1: (2, 2, 2), 2: (5, 5, 5)})
    shifted_x = _one_hot({1: (3, 2, 2), 2: (5, 5, 5)})  # class 1 one voxel along x (1.5 mm), class 2 exact
    shifted_z = _one_hot({1: (2, 2, 3), 2: (5, 5, 5)})  # one voxel along z (3.0 mm)
    hd = MillimetreHausdorffDistanceMetric(percentile=95)
    asd = MillimetreSurfaceDistanceMetric(symmetric=True)
    torch.testing.assert_close(hd([shifted_x, shifted_z], [label, label]), torch.tensor([[1.5, 0.0], [3.0, 0.0]]))
    # half the voxels of each cube at 0, half at one voxel: mean 0.75 mm (x) and 1.5 mm (z), both directions
    torch.testing.assert_close(asd([shifted_x, shifted_z], [label, label]), torch.tensor([[0.75, 0.0], [1.5, 0.0]]))


def test_diagonal_shift_in_anisotropic_mm() -> None:
    # cube shifted by one voxel in x and z: pred voxels at offsets (0,0), (1,0), (0,1), (1,1) from the nearest label
    # voxel in (x, z): 0, 1.5, 3.0 and sqrt(1.5^2 + 3^2) mm
    label = _one_hot({1: (2, 2, 2)})
    pred = _one_hot({1: (3, 2, 3)})
    far = math.sqrt(1.5**2 + 3.0**2)
    hd = MillimetreHausdorffDistanceMetric()(pred[None], label[None])
    asd = MillimetreSurfaceDistanceMetric(symmetric=True)(pred[None], label[None])
    assert hd[0, 0].item() == pytest.approx(far)
    assert asd[0, 0].item() == pytest.approx((0 + 1.5 + 3.0 + far) / 4)


def test_spacing_is_read_per_batch_item() -> None:
    # same one-voxel z shift, two cases with different spacings: list input (the evaluator's) and a collated batch
    coarse = (_one_hot({1: (2, 2, 3)}), _one_hot({1: (2, 2, 2)}))
    fine = (_one_hot({1: (2, 2, 3)}, (0.5, 0.5, 1.0)), _one_hot({1: (2, 2, 2)}, (0.5, 0.5, 1.0)))
    expected = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    metric = MillimetreHausdorffDistanceMetric()
    torch.testing.assert_close(metric([coarse[0], fine[0]], [coarse[1], fine[1]]), expected)
    preds = list_data_collate([{"x": coarse[0]}, {"x": fine[0]}])["x"]
    labels = list_data_collate([{"x": coarse[1]}, {"x": fine[1]}])["x"]
    assert labels.affine.shape == (2, 4, 4)
    torch.testing.assert_close(metric(preds, labels), expected)
    assert batch_spacing_mm(labels) == [SPACING, (0.5, 0.5, 1.0)]


def test_spacing_ignores_flips_and_axis_permutations() -> None:
    affine = torch.tensor([[0.0, 0.0, -3.0, 10.0], [-1.5, 0.0, 0.0, 5.0], [0.0, 2.0, 0.0, 0.0], [0, 0, 0, 1]])
    image = MetaTensor(torch.zeros(1, 4, 4, 4), affine=affine)
    assert voxel_spacing_mm(image) == pytest.approx((1.5, 2.0, 3.0))


def test_missed_and_spurious_structures_get_the_image_diagonal_and_are_counted() -> None:
    label = _one_hot({1: (2, 2, 2), 2: (5, 5, 5)})
    pred = _one_hot({1: (2, 2, 3)})  # lesion (class 2) missed
    spurious = _one_hot({1: (2, 2, 2), 2: (5, 5, 5)})
    no_lesion = _one_hot({1: (2, 2, 2)})  # lesion predicted where the label has none
    hd = MillimetreHausdorffDistanceMetric(percentile=95)
    asd = MillimetreSurfaceDistanceMetric(symmetric=True)
    misses = MissedStructureMetric()
    for metric, hit in ((hd, 3.0), (asd, 1.5)):
        values = metric([pred, spurious], [label, no_lesion])
        torch.testing.assert_close(values, torch.tensor([[hit, DIAGONAL], [0.0, DIAGONAL]]))
        # the mean keeps the misses: (hit + 0 + 2 diagonals) / 4, nothing skipped
        assert metric.aggregate().item() == pytest.approx((hit + 2 * DIAGONAL) / 4)
    torch.testing.assert_close(misses([pred, spurious], [label, no_lesion]), torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert misses.aggregate().item() == 2
    torch.testing.assert_close(misses.aggregate("sum_batch"), torch.tensor([0.0, 2.0]))  # per class


def test_both_empty_is_zero_and_not_a_miss() -> None:
    label = _one_hot({1: (2, 2, 2)})  # no lesion in label nor prediction
    for metric in (MillimetreHausdorffDistanceMetric(percentile=95), MillimetreSurfaceDistanceMetric(symmetric=True)):
        torch.testing.assert_close(metric([label], [label]), torch.tensor([[0.0, 0.0]]))
    assert not structure_misses(label[None], label[None]).any()


def test_penalty_exceeds_the_largest_distance_in_the_volume() -> None:
    # single voxels at opposite corners: the largest distance two voxels of the volume can have, below the penalty
    label = _one_hot({1: (0, 0, 0)}, size=1)
    pred = _one_hot({1: (7, 7, 7)}, size=1)
    hd = MillimetreHausdorffDistanceMetric()([pred], [label])[0, 0].item()
    assert hd == pytest.approx(math.sqrt((7 * 1.5) ** 2 * 2 + (7 * 3.0) ** 2))
    assert hd < miss_penalty_mm(SHAPE, SPACING) == pytest.approx(DIAGONAL)


def test_label_without_affine_needs_a_fixed_spacing() -> None:
    label = _one_hot({1: (2, 2, 2)}).as_tensor()
    pred = _one_hot({1: (2, 2, 3)}).as_tensor()
    with pytest.raises(ValueError, match="MetaTensor"):
        MillimetreHausdorffDistanceMetric()([pred], [label])
    fixed = MillimetreHausdorffDistanceMetric(spacing=(2.0, 2.0, 5.0))([pred], [label])
    torch.testing.assert_close(fixed, torch.tensor([[5.0, 0.0]]))


def test_miss_penalty_needs_one_spacing_per_axis() -> None:
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        miss_penalty_mm((8, 8, 8), (1.0, 1.0))


def test_files_without_spacing_are_measured_in_voxels_with_one_warning() -> None:
    label, pred = _one_hot({1: (2, 2, 2)}, (1.0, 1.0, 1.0)), _one_hot({1: (2, 2, 3)}, (1.0, 1.0, 1.0))
    for item, name in ((label, "/d/case_1.h5::label"), (pred, "/d/case_1.h5::label")):
        item.meta["filename_or_obj"] = name
    assert spacing_is_physical(label) == [False]
    assert spacing_is_physical(MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/d/a.nii.gz"})) == [True]
    assert spacing_is_physical(MetaTensor(torch.zeros(1), meta={"filename_or_obj": ["/d/a.nrrd", "/d/b.npy"]})) == [
        True, False]
    metric = MillimetreHausdorffDistanceMetric()
    with pytest.warns(UserWarning, match=r"case_1.h5::label.*in voxels, not mm"):
        assert metric([pred], [label])[0, 0].item() == 1.0  # one voxel
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric([pred], [label])  # once per metric
        fixed = MillimetreHausdorffDistanceMetric(spacing=0.625)([pred], [label])  # a given spacing: no warning
    assert fixed[0, 0].item() == pytest.approx(0.625)
