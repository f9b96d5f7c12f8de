"""Evaluation and uncertainty metrics that MONAI does not provide."""

from __future__ import annotations

from .layer_agreement import aula, layer_agreement

__all__ = ["aula", "layer_agreement"]
