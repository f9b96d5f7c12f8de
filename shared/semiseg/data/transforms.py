"""Transform chains shared by every bundle: labelled and unlabelled training crops, evaluation loading.

Bundles reference these factories (``semiseg.data.transforms.labelled_train_transforms``) so that eleven
``train.json`` files do not repeat forty lines of transforms. ``inference.json`` spells out the same loading and
normalisation with MONAI transforms only, so a released bundle runs with nothing but MONAI installed;
``tests/bundles`` checks the two stay equal.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandSpatialCropSamplesd,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
    Transposed,
)

from semiseg.data.readers import LoadVolumed

__all__ = ["load_and_normalise", "labelled_train_transforms", "unlabelled_train_transforms", "eval_transforms"]


def load_and_normalise(
    keys: Sequence[str],
    lower: float = 0.5,
    upper: float = 99.5,
    transpose_dim: bool = False,
    binarise_label: bool = False,
) -> list[MapTransform]:
    """Load (NIfTI, NRRD, .npy, LA ``.h5::key``), channel-first, RAS, per-case percentile scaling of ``image``.

    The image is scaled to [0, 1] between its ``lower`` and ``upper`` intensity percentiles (clipped).

    Args:
        keys: data keys to load; ``"image"`` first.
        lower: lower intensity percentile mapped to 0.
        upper: upper intensity percentile mapped to 1.
        transpose_dim: reorder the spatial axes of volumes stored H x W x D to D x H x W (MONAI ``Transposed``,
            invertible), the Bayesian Pseudo Labels reference's ``transpose_dim`` (Xu et al., MICCAI 2022 code), so
            that crop sizes are written D x H x W as there. For geometry-free arrays (``.npy``); NIfTI is
            reoriented to RAS whatever the storage order.
        binarise_label: ``label > 0`` becomes 1 (MONAI ``AsDiscreted(threshold=0.5)`` on integer labels): organ and
            lesion merged, or the BraTS whole tumour.

    Returns:
        The transforms, as a list to extend.
    """
    keys = list(keys)
    transforms: list[MapTransform] = [
        LoadVolumed(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        ScaleIntensityRangePercentilesd(keys="image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True),
    ]
    if transpose_dim:
        transforms.append(Transposed(keys=keys, indices=(0, 3, 1, 2)))
    if binarise_label and "label" in keys:
        transforms.append(AsDiscreted(keys="label", threshold=0.5))
    return transforms


def _flips(keys: list[str], prob: float) -> list[MapTransform]:
    return [RandFlipd(keys=keys, prob=prob, spatial_axis=axis) for axis in range(3)]


def labelled_train_transforms(
    roi_size: Sequence[int],
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    flip_prob: float = 0.5,
    transpose_dim: bool = False,
    binarise_label: bool = False,
) -> Compose:
    """Labelled training chain: load, normalise, pad to ``roi_size``, foreground-balanced random crops, flips.

    Args:
        roi_size: crop size (docs/architecture.md §3: 112x112x80 for LA; the demo uses 48^3).
        num_samples: crops per case per draw (a DataLoader batch of ``b`` cases gives ``b * num_samples`` patches).
        pos: ``RandCropByPosNegLabeld`` foreground weight.
        neg: background weight.
        flip_prob: probability of a flip along each axis.
        transpose_dim: see :func:`load_and_normalise`.
        binarise_label: see :func:`load_and_normalise`.

    Returns:
        The composed transform.
    """
    keys = ["image", "label"]
    return Compose(
        load_and_normalise(keys, transpose_dim=transpose_dim, binarise_label=binarise_label)
        + [
            SpatialPadd(keys=keys, spatial_size=roi_size),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=roi_size, pos=pos, neg=neg, num_samples=num_samples
            ),
            *_flips(keys, flip_prob),
            EnsureTyped(keys=keys, track_meta=True),  # file names stay for error messages; the trainer strips meta
        ]
    )


def unlabelled_train_transforms(
    roi_size: Sequence[int], num_samples: int = 2, flip_prob: float = 0.5, transpose_dim: bool = False
) -> Compose:
    """Unlabelled training chain: load, normalise, pad, uniform random crops, flips.

    Args:
        roi_size: crop size, equal to the labelled one (the methods concatenate both batches).
        num_samples: crops per case per draw.
        flip_prob: probability of a flip along each axis.
        transpose_dim: see :func:`load_and_normalise`.

    Returns:
        The composed transform.
    """
    keys = ["image"]
    return Compose(
        load_and_normalise(keys, transpose_dim=transpose_dim)
        + [
            SpatialPadd(keys=keys, spatial_size=roi_size),
            RandSpatialCropSamplesd(keys=keys, roi_size=roi_size, num_samples=num_samples, random_size=False),
            *_flips(keys, flip_prob),
            EnsureTyped(keys=keys, track_meta=True),  # file names stay for error messages; the trainer strips meta
        ]
    )


def eval_transforms(with_label: bool = True, transpose_dim: bool = False, binarise_label: bool = False) -> Compose:
    """Whole-volume chain for validation/evaluation (sliding-window inference follows).

    Args:
        with_label: also load ``label``.
        transpose_dim: see :func:`load_and_normalise`.
        binarise_label: see :func:`load_and_normalise`.

    Returns:
        The composed transform.
    """
    keys = ["image", "label"] if with_label else ["image"]
    return Compose(load_and_normalise(keys, transpose_dim=transpose_dim, binarise_label=binarise_label))
