"""Experiment tracking of a bundle run: ``--tracking mlflow`` logs every loss term of semiseg's trainer.

MONAI's ``--tracking mlflow`` (``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``) appends an ``MLFlowHandler`` to
``train#handlers`` whose ``output_transform`` is ``from_engine(["loss"], first=True)``: it expects the decollated
trainer output of MONAI's ``SupervisedTrainer`` (a list of per-item dicts). :class:`~semiseg.engines.
SemiSupervisedTrainer` keeps its output collated (one dict, no per-item copies), for which that transform returns a
tuple that MLflow cannot log. ``train.json``'s ``initialize`` calls :func:`track_loss_terms` on
``@train#handlers`` before the trainer is built: each MLflow handler that still has MONAI's ``from_engine``
transform gets :func:`semiseg.engines.loss_terms` instead, so MLflow, like the console and TensorBoard, receives
every scalar term (``loss``, ``sup_loss``, ``unsup_loss``, a method's own terms). A transform set in a custom
``--tracking settings.json`` is left alone. See docs/architecture.md §5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.utils import optional_import

from ..engines.outputs import loss_terms

MLFlowHandler, HAS_MLFLOW_HANDLER = optional_import("monai.handlers", name="MLFlowHandler")

__all__ = ["track_loss_terms"]


def _is_monai_default(transform: Any) -> bool:
    """Whether ``transform`` is a ``monai.handlers.from_engine(...)`` closure (MONAI's tracking default)."""
    return getattr(transform, "__qualname__", "").startswith("from_engine.") and getattr(
        transform, "__module__", ""
    ).startswith("monai.")


def track_loss_terms(handlers: Sequence[Any] | None) -> int:
    """Give every MLflow handler in ``handlers`` that uses MONAI's default ``from_engine`` transform
    :func:`~semiseg.engines.loss_terms` as its ``output_transform``.

    Args:
        handlers: the trainer's handlers (``@train#handlers``), already built.

    Returns:
        How many handlers were changed (0 without ``--tracking mlflow``).
    """
    if not HAS_MLFLOW_HANDLER or not handlers:
        return 0
    changed = 0
    for handler in handlers:
        if isinstance(handler, MLFlowHandler) and _is_monai_default(handler.output_transform):
            handler.output_transform = loss_terms
            changed += 1
    return changed
