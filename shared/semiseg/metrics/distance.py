"""Surface distances in millimetres, with misses counted and penalised instead of skipped (docs/architecture.md §5).

MONAI's ``HausdorffDistanceMetric`` and ``SurfaceDistanceMetric`` measure in voxels unless they are given a
``spacing``, and for a class that is absent from the prediction or from the label they return inf (absent from one)
or NaN (absent from both), which MONAI's reductions and ``numpy.nanmean`` leave out of the mean: a method that misses
a lesion then *looks better* than one that finds it roughly. The metrics here wrap MONAI's (the distance computation
is MONAI's) and change three things:

- **millimetres**: each batch item's spacing is read from the affine of its label (a MONAI ``MetaTensor``, as the
  evaluator's postprocessing leaves it), so anisotropic and per-case spacings are measured correctly;
- **miss penalty**: a class present in exactly one of label and prediction (a missed or a spurious structure) gets
  the *diagonal of the image in mm*, ``sqrt(sum_i (n_i s_i)^2)`` for ``n_i`` voxels of spacing ``s_i`` along axis
  ``i``. It is larger than any distance between two voxels of the volume, so a miss always scores worse than any
  detection, however poor. The BraTS 2023 lesion-wise evaluation does the same: its 374 mm HD95 for a missed or
  spurious lesion (github.com/rachitsaluja/brats_val_2023) is about the diagonal of its 240 x 240 x 155 1-mm volume
  (373.1 mm);
- **both empty**: a class absent from both label and prediction is a correct "nothing there": distance 0, not a miss.

Formats that store no voxel spacing (``.npy``/``.npz``, SSL4MIS ``.h5``) load with an identity affine: their distances
are in voxels (what SSL4MIS and UA-MT report for the Left Atrium data), and the metrics warn once with the file name;
give them a fixed ``spacing`` to measure mm.

:class:`MissedStructureMetric` counts the misses (same test: present in exactly one of the two), so a summary can
report how often the penalty was used next to the mean distance.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric, SurfaceDistanceMetric
from monai.metrics.utils import do_metric_reduction, prepare_spacing
from monai.utils import MetricReduction

from semiseg.data.readers import H5_SUFFIXES, split_h5_path

__all__ = [
    "NO_SPACING_SUFFIXES",
    "MillimetreHausdorffDistanceMetric",
    "MillimetreSurfaceDistanceMetric",
    "MissedStructureMetric",
    "batch_spacing_mm",
    "miss_penalty_mm",
    "spacing_is_physical",
    "structure_misses",
    "voxel_spacing_mm",
]

SpacingArg = float | Sequence[float] | Sequence[Sequence[float]] | None

# Files that store no voxel spacing (MONAI's NumpyReader and semiseg's H5Reader give them an identity affine).
NO_SPACING_SUFFIXES = (".npy", ".npz") + H5_SUFFIXES

# MONAI warns for every empty class; these metrics handle empty classes explicitly (penalty or 0), so the warning
# would only be noise in every evaluation log. MONAI 1.5-1.6 also passes its own deprecated `always_return_as_numpy`
# to get_mask_edges on every call, a FutureWarning about MONAI's code, not ours.
_EMPTY_WARNING = r"the (ground truth|prediction) of class .* is all 0"
_MONAI_INTERNAL_DEPRECATION = r".*always_return_as_numpy"


def voxel_spacing_mm(image: torch.Tensor, spatial_dims: int | None = None) -> tuple[float, ...]:
    """Voxel spacing of one channel-first image, from its affine (the column norms of its linear part).

    The affine is in the units of the file (mm for NIfTI, NRRD and DICOM as MONAI's ``LoadImage`` reads them);
    rotations and flips do not change the result.

    Args:
        image: a ``MetaTensor`` of shape ``(C, *spatial)`` whose ``affine`` is ``(d + 1, d + 1)`` (a batch item with a
            ``(1, d + 1, d + 1)`` affine is accepted too).
        spatial_dims: number of spatial dimensions ``d``; default ``image.ndim - 1``.

    Returns:
        The spacing along each spatial axis, in mm.

    Raises:
        ValueError: if ``image`` carries no affine or the spacing is not positive and finite.
    """
    dims = image.ndim - 1 if spatial_dims is None else spatial_dims
    affine = _affine(image)
    if affine.ndim == 3 and affine.shape[0] == 1:
        affine = affine[0]
    if affine.ndim != 2:
        raise ValueError(f"expected one affine for a single image, got affine of shape {tuple(affine.shape)}.")
    return _spacing_from_affine(affine, dims)


def batch_spacing_mm(images: torch.Tensor) -> list[tuple[float, ...]]:
    """Voxel spacing of each item of a batch-first ``MetaTensor`` ``(B, C, *spatial)``.

    Accepts one affine for the whole batch (an item unsqueezed by MONAI's list-of-tensors metric path) or one per
    item (``(B, d + 1, d + 1)``, a collated batch).

    Args:
        images: the batch, typically the one-hot label after the evaluator's postprocessing.

    Returns:
        ``B`` tuples of ``d`` spacings in mm.

    Raises:
        ValueError: if ``images`` carries no affine, or the affines do not match the batch size.
    """
    batch, dims = images.shape[0], images.ndim - 2
    affine = _affine(images)
    if affine.ndim == 2:
        return [_spacing_from_affine(affine, dims)] * batch
    if affine.ndim == 3 and affine.shape[0] in (1, batch):
        return [_spacing_from_affine(affine[min(b, affine.shape[0] - 1)], dims) for b in range(batch)]
    raise ValueError(f"affine of shape {tuple(affine.shape)} does not match a batch of {batch} images.")


def spacing_is_physical(image: torch.Tensor) -> list[bool]:
    """Per item, whether the file ``image`` was read from stores a voxel spacing (so its affine is in mm).

    False for ``.npy``/``.npz`` and ``file.h5::dataset`` items (:data:`NO_SPACING_SUFFIXES`), whose identity affine
    means one voxel, not one millimetre; True for everything else (NIfTI, NRRD, DICOM, ...) and for items without a
    file name.

    Args:
        image: a channel-first image or a batch, with ``filename_or_obj`` in its meta (one name or one per item).

    Returns:
        One flag per file name (one flag if there is a single name or none).
    """
    names = getattr(image, "meta", {}).get("filename_or_obj", "")
    names = names if isinstance(names, (list, tuple)) else [names]
    return [not split_h5_path(str(n))[0].lower().endswith(NO_SPACING_SUFFIXES) for n in names] or [True]


def miss_penalty_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The distance given to a missed or spurious structure: the diagonal of the image, ``sqrt(sum (n_i s_i)^2)``.

    Strictly larger than any distance between two voxel centres of the image (at most ``(n_i - 1) s_i`` per axis),
    so a miss always scores worse than any detection; see the module docstring for the BraTS convention it follows.

    Args:
        shape: spatial shape ``(n_1, ..., n_d)`` in voxels.
        spacing: voxel spacing ``(s_1, ..., s_d)`` in mm.

    Returns:
        The penalty in mm.

    Raises:
        ValueError: if the lengths differ.
    """
    if len(shape) != len(spacing):
        raise ValueError(f"shape {tuple(shape)} and spacing {tuple(spacing)} must have one entry per spatial axis.")
    return math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing)))


def structure_misses(y_pred: torch.Tensor, y: torch.Tensor, include_background: bool = False) -> torch.Tensor:
    """Which classes of each item are present in exactly one of prediction and label (a missed or spurious structure).

    Args:
        y_pred: binarised one-hot prediction ``(B, C, *spatial)``.
        y: binarised one-hot label, same shape.
        include_background: keep channel 0 (as MONAI's metrics' argument of the same name).

    Returns:
        ``(B, C)`` (or ``(B, C - 1)`` without background) bool.

    Raises:
        ValueError: if the shapes differ.
    """
    pred_present, label_present = _presence(y_pred, y, include_background)
    return pred_present ^ label_present


class _InMillimetres:
    """Mixin for a MONAI surface-distance metric: per-item spacing in mm, the miss penalty, both-empty = 0."""

    spacing: SpacingArg
    _warned: bool

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return _in_mm(self, super()._compute_tensor, y_pred, y, kwargs.get("spacing", self.spacing))  # type: ignore[misc]


class MillimetreHausdorffDistanceMetric(_InMillimetres, HausdorffDistanceMetric):
    """MONAI's (percentile) Hausdorff distance in mm, with the miss penalty and both-empty = 0 of this module.

    Euclidean distance only (MONAI ignores the spacing for chessboard/taxicab). Inputs as MONAI's: binarised one-hot
    ``y_pred`` and ``y``, lists of channel-first tensors or batch-first tensors; the spacing of each item comes from
    ``y``'s affine unless ``spacing`` is given here or in the call (MONAI's ``spacing`` semantics: a number, one
    spacing per axis, or one per batch item).

    Args:
        include_background: whether to include channel 0.
        percentile: e.g. 95 for HD95; ``None`` for the maximum.
        directed: directed distance (prediction to label) instead of the symmetric one.
        reduction: MONAI reduction of the buffer; with the penalty no entry is NaN, so nothing is left out.
        get_not_nans: as MONAI's.
        spacing: a fixed spacing in mm for every item, for data without an affine; ``None`` reads the affine.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = None,
        directed: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        spacing: SpacingArg = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            distance_metric="euclidean",
            percentile=percentile,
            directed=directed,
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        self.spacing = spacing
        self._warned = False  # about a file without voxel spacing, once per metric


class MillimetreSurfaceDistanceMetric(_InMillimetres, SurfaceDistanceMetric):
    """MONAI's average surface distance (ASD) in mm, with the miss penalty and both-empty = 0 of this module.

    Euclidean distance only. Inputs and spacing as :class:`MillimetreHausdorffDistanceMetric`.

    Args:
        include_background: whether to include channel 0.
        symmetric: average over both directions (the usual ASD) instead of prediction to label only.
        reduction: MONAI reduction of the buffer.
        get_not_nans: as MONAI's.
        spacing: a fixed spacing in mm for every item; ``None`` reads the affine.
    """

    def __init__(
        self,
        include_background: bool = False,
        symmetric: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        spacing: SpacingArg = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            symmetric=symmetric,
            distance_metric="euclidean",
            reduction=reduction,
            get_not_nans=get_not_nans,
        )
        self.spacing = spacing
        self._warned = False  # about a file without voxel spacing, once per metric


class MissedStructureMetric(CumulativeIterationMetric):
    """Per item and class, 1 where the class is in exactly one of prediction and label (:func:`structure_misses`).

    The buffer holds the per-case 0/1 flags (what ``MetricsSaver`` writes per case); the default ``"sum"`` reduction
    gives the number of misses over all cases and classes, ``"sum_batch"`` one count per class.

    Args:
        include_background: whether to include channel 0.
        reduction: MONAI reduction; default ``"sum"``.
    """

    def __init__(
        self, include_background: bool = False, reduction: MetricReduction | str = MetricReduction.SUM
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("MissedStructureMetric needs the label y as well as the prediction.")
        return structure_misses(y_pred, y, self.include_background).float()

    def aggregate(self, reduction: MetricReduction | str | None = None) -> torch.Tensor:
        """Reduce the per-case flags (default: total count).

        Args:
            reduction: overrides the constructor's reduction.

        Returns:
            The reduced counts.

        Raises:
            ValueError: if the buffer is not a tensor (nothing was computed).
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"the data to aggregate must be a PyTorch Tensor, got {type(data)}.")
        return do_metric_reduction(data, reduction or self.reduction)[0]


def _affine(image: torch.Tensor) -> torch.Tensor:
    if not isinstance(image, MetaTensor):
        raise ValueError(
            f"cannot measure distances in mm: the label is a {type(image).__name__}, not a MONAI MetaTensor with an "
            "affine. Keep the label loaded by LoadImage(d) through the postprocessing (its transforms keep the "
            "meta data), or give the metric a fixed `spacing`."
        )
    return torch.as_tensor(image.affine, dtype=torch.float64)


def _spacing_from_affine(affine: torch.Tensor, spatial_dims: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in affine_to_spacing(affine, r=spatial_dims))
    if len(spacing) != spatial_dims or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"voxel spacing {spacing} read from the affine\n{affine}\nis not {spatial_dims} positive finite numbers: "
            "fix the image header (pixdim / space directions)."
        )
    return spacing


def _presence(y_pred: torch.Tensor, y: torch.Tensor, include_background: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    pred = y_pred.reshape(*y_pred.shape[:2], -1).bool().any(dim=-1)
    label = y.reshape(*y.shape[:2], -1).bool().any(dim=-1)
    if not include_background:
        pred, label = pred[:, 1:], label[:, 1:]
    return pred, label


def _item_spacings(y: torch.Tensor, spacing: SpacingArg) -> list[tuple[float, ...]]:
    batch, dims = y.shape[0], y.ndim - 2
    if spacing is None:
        return batch_spacing_mm(y)
    items = []
    for s in prepare_spacing(spacing=spacing, batch_size=batch, img_dim=dims):
        values = [float(v) for v in np.atleast_1d(np.asarray(s, dtype=np.float64))]
        items.append(tuple(values * dims if len(values) == 1 else values))
    return items


def _in_mm(
    metric: MillimetreHausdorffDistanceMetric | MillimetreSurfaceDistanceMetric,
    compute: Callable[..., torch.Tensor],
    y_pred: torch.Tensor,
    y: torch.Tensor,
    spacing: SpacingArg,
) -> torch.Tensor:
    """MONAI's distances with each item's spacing, then the miss penalty and both-empty = 0.

    Warns once per metric when the spacing comes from a file that stores none (:func:`spacing_is_physical`).
    """
    if y is None:
        raise ValueError("distance metrics need the label y as well as the prediction.")
    if y_pred.ndim < 3:
        raise ValueError(f"y_pred must be (B, C, *spatial), got shape {tuple(y_pred.shape)}.")
    spacings = _item_spacings(y, spacing)
    if spacing is None and not metric._warned and not all(spacing_is_physical(y)):
        metric._warned = True
        warnings.warn(
            f"{y.meta.get('filename_or_obj')}: this format stores no voxel spacing (identity affine), so its surface "
            "distances, and those of every such file in this run, are in voxels, not mm. Give the distance metric "
            "handlers a `spacing` in mm to measure millimetres.",
            stacklevel=4,
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EMPTY_WARNING)
        warnings.filterwarnings("ignore", message=_MONAI_INTERNAL_DEPRECATION, category=FutureWarning)
        distances = compute(y_pred, y, spacing=[list(s) for s in spacings])
    pred_present, label_present = _presence(y_pred, y, metric.include_background)
    shape = tuple(y.shape[2:])
    penalties = [miss_penalty_mm(shape, s) for s in spacings]
    penalty = torch.tensor(penalties, dtype=distances.dtype, device=distances.device)
    distances = torch.where(pred_present ^ label_present, penalty[:, None].expand_as(distances), distances)
    return torch.where(~pred_present & ~label_present, torch.zeros_like(distances), distances)
