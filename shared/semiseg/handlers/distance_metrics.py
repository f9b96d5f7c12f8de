"""Ignite metric handlers for surface distances in mm and missed structures (docs/architecture.md §5).

Drop-in replacements, in a config's ``key_metric`` / ``additional_metrics``, for MONAI's ``HausdorffDistance`` and
``SurfaceDistance`` handlers (which measure in voxels): the same ``IgniteMetricHandler`` pattern around the
:mod:`semiseg.metrics.distance` metrics, which read each case's voxel spacing from its label's affine and give a
missed or spurious structure the image diagonal in mm instead of a NaN/inf that means skip. :class:`MissedStructures`
counts those misses, per case and class, so the summary says how often the penalty was used.

Per-case values go to ``engine.state.metric_details[<name>]`` (``save_details=True``) where ``MetricsSaver`` and
:class:`semiseg.handlers.CaseMetricsWriter` read them.
"""

from __future__ import annotations

from collections.abc import Callable

from monai.handlers import IgniteMetricHandler
from monai.utils import MetricReduction

from semiseg.metrics.distance import (
    MillimetreHausdorffDistanceMetric,
    MillimetreSurfaceDistanceMetric,
    MissedStructureMetric,
    SpacingArg,
)

__all__ = ["HausdorffDistanceMM", "SurfaceDistanceMM", "MissedStructures"]


def _identity(x: object) -> object:
    return x


class HausdorffDistanceMM(IgniteMetricHandler):
    """(Percentile) Hausdorff distance in mm per case and class; its mean over cases and classes as the metric value.

    Args:
        include_background: whether to include channel 0.
        percentile: e.g. 95 for HD95; ``None`` for the maximum.
        directed: directed distance (prediction to label) instead of the symmetric one.
        spacing: a fixed spacing in mm for every case, for labels without an affine; ``None`` (default) reads each
            label's affine.
        reduction: MONAI reduction over cases and classes.
        output_transform: ``engine.state.output`` to ``(y_pred, y)``, e.g.
            ``monai.handlers.from_engine(['pred', 'label'])``; ``y`` must keep its MetaTensor affine.
        save_details: keep the per-case values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        include_background: bool = False,
        percentile: float | None = None,
        directed: bool = False,
        spacing: SpacingArg = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        metric_fn = MillimetreHausdorffDistanceMetric(
            include_background=include_background, percentile=percentile, directed=directed, reduction=reduction,
            spacing=spacing,
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class SurfaceDistanceMM(IgniteMetricHandler):
    """Average surface distance (ASD) in mm per case and class; its mean as the metric value.

    Args:
        include_background: whether to include channel 0.
        symmetric: average over both directions (the usual ASD).
        spacing: a fixed spacing in mm for every case; ``None`` (default) reads each label's affine.
        reduction: MONAI reduction over cases and classes.
        output_transform: ``engine.state.output`` to ``(y_pred, y)``.
        save_details: keep the per-case values in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        include_background: bool = False,
        symmetric: bool = False,
        spacing: SpacingArg = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        metric_fn = MillimetreSurfaceDistanceMetric(
            include_background=include_background, symmetric=symmetric, reduction=reduction, spacing=spacing
        )
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class MissedStructures(IgniteMetricHandler):
    """Missed or spurious structures: per case and class 1 if the class is in exactly one of label and prediction.

    The metric value is the total count over cases and classes (``reduction="sum"``); the per-case flags are the
    details (``<name>_raw.csv`` from ``MetricsSaver``, the ``misses`` entry of each per-case JSON).

    Args:
        include_background: whether to include channel 0.
        reduction: MONAI reduction; default the total count.
        output_transform: ``engine.state.output`` to ``(y_pred, y)``.
        save_details: keep the per-case flags in ``engine.state.metric_details``.
    """

    def __init__(
        self,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.SUM,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        metric_fn = MissedStructureMetric(include_background=include_background, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
