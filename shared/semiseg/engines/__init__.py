"""Engines: the semi-supervised trainer (evaluation uses MONAI's SupervisedEvaluator unchanged)."""

from __future__ import annotations

from .outputs import loss_terms
from .trainer import SemiSupervisedTrainer, UnlabelledCycle

__all__ = ["SemiSupervisedTrainer", "UnlabelledCycle", "loss_terms"]
