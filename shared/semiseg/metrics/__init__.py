"""Evaluation and uncertainty metrics that MONAI does not provide."""

from __future__ import annotations

from .distance import (
    MillimetreHausdorffDistanceMetric,
    MillimetreSurfaceDistanceMetric,
    MissedStructureMetric,
    batch_spacing_mm,
    miss_penalty_mm,
    spacing_is_physical,
    structure_misses,
    voxel_spacing_mm,
)
from .layer_agreement import area_under_agreement, aula, aula_per_class, layer_agreement

__all__ = [
    "MillimetreHausdorffDistanceMetric",
    "MillimetreSurfaceDistanceMetric",
    "MissedStructureMetric",
    "area_under_agreement",
    "aula",
    "aula_per_class",
    "batch_spacing_mm",
    "layer_agreement",
    "miss_penalty_mm",
    "spacing_is_physical",
    "structure_misses",
    "voxel_spacing_mm",
]
