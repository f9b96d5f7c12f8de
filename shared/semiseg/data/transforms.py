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
    FgBgToIndicesd,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropSamplesd,
    ScaleIntensityRangePercentilesd,
    SpatialPadd,
    Transposed,
)

from semiseg.data.device import device_of
from semiseg.data.readers import LoadVolumed
from semiseg.settings import flag

__all__ = [
    "BG_INDICES",
    "FG_INDICES",
    "INTENSITY_NORMS",
    "LABEL_CROPS",
    "eval_transforms",
    "intensity_transforms",
    "labelled_train_transforms",
    "load_and_normalise",
    "unlabelled_train_transforms",
]

INTENSITY_NORMS = ("percentile", "zscore", "none")
"""``intensity_norm`` values: per-volume percentile scaling to [0, 1], per-volume z-score, or none."""
LABEL_CROPS = ("balanced", "uniform")
"""``label_crop`` values: foreground-balanced (``RandCropByPosNegLabeld``) or uniform random labelled crops."""


def _choice(value: str, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"setting {name} must be one of {', '.join(choices)}, got {value!r}: pass --{name} <value>.")
    return value


def intensity_transforms(
    intensity_norm: str = "percentile", lower: float = 0.5, upper: float = 99.5
) -> list[MapTransform]:
    """The intensity normalisation of ``image``, one volume at a time (the template's ``intensity_norm``).

    - ``"percentile"``: scaled to [0, 1] between the volume's ``lower`` and ``upper`` intensity percentiles, clipped
      (MONAI ``ScaleIntensityRangePercentilesd``);
    - ``"zscore"``: minus the volume's mean, divided by its standard deviation, per channel (MONAI
      ``NormalizeIntensityd``): the SSL4MIS 3-D pre-processing (``(image - mean) / std`` per case);
    - ``"none"``: unchanged, for data stored already normalised (the UA-MT/SSL4MIS LA ``.h5`` volumes).

    ``inference.json`` spells out the same transforms with MONAI alone (``_disabled_`` by the same setting).

    Args:
        intensity_norm: one of :data:`INTENSITY_NORMS`.
        lower: lower percentile mapped to 0 (``"percentile"``).
        upper: upper percentile mapped to 1 (``"percentile"``).

    Returns:
        Zero or one transform, as a list.

    Raises:
        ValueError: for an unknown ``intensity_norm``, naming the setting.
    """
    _choice(intensity_norm, INTENSITY_NORMS, "intensity_norm")
    if intensity_norm == "percentile":
        return [
            ScaleIntensityRangePercentilesd(keys="image", lower=lower, upper=upper, b_min=0.0, b_max=1.0, clip=True)
        ]
    if intensity_norm == "zscore":
        return [NormalizeIntensityd(keys="image", channel_wise=True)]
    return []


def load_and_normalise(
    keys: Sequence[str],
    lower: float = 0.5,
    upper: float = 99.5,
    transpose_dim: bool = False,
    binarise_label: bool = False,
    intensity_norm: str = "percentile",
) -> list[MapTransform]:
    """Load (NIfTI, NRRD, .npy, LA ``.h5::key``), channel-first, RAS, per-case intensity normalisation of ``image``.

    Args:
        keys: data keys to load; ``"image"`` first.
        lower: lower intensity percentile mapped to 0 (``intensity_norm="percentile"``).
        upper: upper intensity percentile mapped to 1 (``intensity_norm="percentile"``).
        transpose_dim: reorder the spatial axes of volumes stored H x W x D to D x H x W (MONAI ``Transposed``,
            invertible), the Bayesian Pseudo Labels reference's ``transpose_dim`` (Xu et al., MICCAI 2022 code), so
            that crop sizes are written D x H x W as there. For geometry-free arrays (``.npy``); NIfTI is
            reoriented to RAS whatever the storage order.
        binarise_label: ``label > 0`` becomes 1 (MONAI ``AsDiscreted(threshold=0.5)`` on integer labels): organ and
            lesion merged, or the BraTS whole tumour.
        intensity_norm: see :func:`intensity_transforms`.

    Returns:
        The transforms, as a list to extend.
    """
    keys = list(keys)
    transforms: list[MapTransform] = [
        LoadVolumed(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        *intensity_transforms(intensity_norm, lower, upper),
    ]
    if transpose_dim:
        transforms.append(Transposed(keys=keys, indices=(0, 3, 1, 2)))
    if binarise_label and "label" in keys:
        transforms.append(AsDiscreted(keys="label", threshold=0.5))
    return transforms


def _flips(keys: list[str], prob: float, rot90: bool = False) -> list[MapTransform]:
    """A random flip along each axis with ``prob``; with ``rot90`` first a random quarter turn in the plane of the
    first two spatial axes, k in {0, 1, 2, 3} uniformly (SSL4MIS ``RandomRotFlip``: ``np.rot90(image, k)``,
    ``k = np.random.randint(0, 4)``; MONAI ``RandRotate90d`` turns with probability 3/4 by 1, 2 or 3 quarters)."""
    turns = [RandRotate90d(keys=keys, prob=0.75, max_k=3, spatial_axes=(0, 1))] if rot90 else []
    return turns + [RandFlipd(keys=keys, prob=prob, spatial_axis=axis) for axis in range(3)]


FG_INDICES = "label_fg_indices"
"""Data key of the foreground voxel indices precomputed for the balanced crop on a ``data_device``."""
BG_INDICES = "label_bg_indices"
"""Data key of the background voxel indices precomputed for the balanced crop on a ``data_device``."""


def _to_device(keys: list[str], data_device: str | None) -> list[MapTransform]:
    """The end of the cached part of a device-style chain: the volumes as tensors on ``data_device`` (the file
    names kept in their metadata), or nothing without a ``data_device``."""
    if data_device is None:
        return []
    return [EnsureTyped(keys=keys, track_meta=True, device=device_of(data_device))]


def _square_in_plane(roi_size: Sequence[int], rot90: bool) -> bool:
    rot90 = flag(rot90, "rot90")
    if rot90 and int(roi_size[0]) != int(roi_size[1]):
        raise ValueError(
            f"setting rot90 turns crops in the plane of their first two axes, which needs roi_size[0] == roi_size[1];"
            f" got roi_size {list(roi_size)}: pass --rot90 false or a crop with equal first two sides."
        )
    return rot90


def labelled_train_transforms(
    roi_size: Sequence[int],
    num_samples: int = 2,
    pos: float = 1.0,
    neg: float = 1.0,
    flip_prob: float = 0.5,
    transpose_dim: bool = False,
    binarise_label: bool = False,
    intensity_norm: str = "percentile",
    label_crop: str = "balanced",
    rot90: bool = False,
    data_device: str | None = None,
) -> Compose:
    """Labelled training chain: load, normalise, pad to ``roi_size``, random crops, (quarter turns,) flips.

    With ``data_device`` (the template's setting, :mod:`semiseg.data.device`) the cached part ends with the volumes
    moved to that device, and for the balanced crop the foreground/background voxel indices computed once
    (``FgBgToIndicesd``, kept in host memory); the random part then runs on the device tensors. The crops are those
    of the chain without ``data_device`` for the same random seeds (the same MONAI random transforms in the same
    order, drawing from the same generators).

    Args:
        roi_size: crop size (docs/architecture.md §3: 112x112x80 for LA; the demo uses 48^3).
        num_samples: crops per case per draw (a DataLoader batch of ``b`` cases gives ``b * num_samples`` patches).
        pos: ``RandCropByPosNegLabeld`` foreground weight (``label_crop="balanced"``).
        neg: background weight (``label_crop="balanced"``).
        flip_prob: probability of a flip along each axis.
        transpose_dim: see :func:`load_and_normalise`.
        binarise_label: see :func:`load_and_normalise`.
        intensity_norm: see :func:`intensity_transforms`.
        label_crop: ``"balanced"``: crops centred on a foreground voxel with probability ``pos / (pos + neg)``
            (MONAI ``RandCropByPosNegLabeld``); ``"uniform"``: crops anywhere with equal probability (MONAI
            ``RandSpatialCropSamplesd``), as the SSL4MIS 3-D loaders' ``RandomCrop``.
        rot90: also a random quarter turn in the plane of the first two axes before the flips (SSL4MIS
            ``RandomRotFlip``); needs ``roi_size[0] == roi_size[1]``.
        data_device: null (default), or the device the cached volumes are moved to and augmented on (``"cuda"``;
            ``"cpu"`` runs the device-style chain on the CPU).

    Returns:
        The composed transform.

    Raises:
        ValueError: for an unknown ``intensity_norm`` or ``label_crop``, or ``rot90`` with a crop whose first two
            sides differ, naming the setting.
        SettingError: for a bad ``data_device``.
    """
    keys = ["image", "label"]
    _choice(label_crop, LABEL_CROPS, "label_crop")
    rot90 = _square_in_plane(roi_size, rot90)
    data_device = None if device_of(data_device) is None else data_device
    indices: list[MapTransform] = []
    if label_crop == "balanced":
        precomputed = {"fg_indices_key": FG_INDICES, "bg_indices_key": BG_INDICES} if data_device is not None else {}
        crop = RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=roi_size, pos=pos, neg=neg, num_samples=num_samples,
            **precomputed,
        )
        if precomputed:
            indices = [FgBgToIndicesd(keys="label", fg_postfix="_fg_indices", bg_postfix="_bg_indices")]
    else:
        crop = RandSpatialCropSamplesd(keys=keys, roi_size=roi_size, num_samples=num_samples, random_size=False)
    return Compose(
        load_and_normalise(
            keys, transpose_dim=transpose_dim, binarise_label=binarise_label, intensity_norm=intensity_norm
        )
        + [
            SpatialPadd(keys=keys, spatial_size=roi_size),
            *indices,
            *_to_device(keys, data_device),
            crop,
            *_flips(keys, flip_prob, rot90),
            EnsureTyped(keys=keys, track_meta=True),  # file names stay for error messages; the trainer strips meta
        ]
    )


def unlabelled_train_transforms(
    roi_size: Sequence[int],
    num_samples: int = 2,
    flip_prob: float = 0.5,
    transpose_dim: bool = False,
    intensity_norm: str = "percentile",
    rot90: bool = False,
    data_device: str | None = None,
) -> Compose:
    """Unlabelled training chain: load, normalise, pad, uniform random crops, (quarter turns,) flips.

    Args:
        roi_size: crop size, equal to the labelled one (the methods concatenate both batches).
        num_samples: crops per case per draw.
        flip_prob: probability of a flip along each axis.
        transpose_dim: see :func:`load_and_normalise`.
        intensity_norm: see :func:`intensity_transforms`.
        rot90: see :func:`labelled_train_transforms`.
        data_device: see :func:`labelled_train_transforms`.

    Returns:
        The composed transform.
    """
    keys = ["image"]
    rot90 = _square_in_plane(roi_size, rot90)
    data_device = None if device_of(data_device) is None else data_device
    return Compose(
        load_and_normalise(keys, transpose_dim=transpose_dim, intensity_norm=intensity_norm)
        + [
            SpatialPadd(keys=keys, spatial_size=roi_size),
            *_to_device(keys, data_device),
            RandSpatialCropSamplesd(keys=keys, roi_size=roi_size, num_samples=num_samples, random_size=False),
            *_flips(keys, flip_prob, rot90),
            EnsureTyped(keys=keys, track_meta=True),  # file names stay for error messages; the trainer strips meta
        ]
    )


def eval_transforms(
    with_label: bool = True,
    transpose_dim: bool = False,
    binarise_label: bool = False,
    intensity_norm: str = "percentile",
) -> Compose:
    """Whole-volume chain for validation/evaluation (sliding-window inference follows).

    Args:
        with_label: also load ``label``.
        transpose_dim: see :func:`load_and_normalise`.
        binarise_label: see :func:`load_and_normalise`.
        intensity_norm: see :func:`intensity_transforms`; the same as training's.

    Returns:
        The composed transform.
    """
    keys = ["image", "label"] if with_label else ["image"]
    return Compose(
        load_and_normalise(
            keys, transpose_dim=transpose_dim, binarise_label=binarise_label, intensity_norm=intensity_norm
        )
    )
