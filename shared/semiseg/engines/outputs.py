"""Readers of ``engine.state.output`` for logging handlers (StatsHandler, TensorBoardStatsHandler)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.utils import CommonKeys as Keys

__all__ = ["loss_terms", "image_filenames"]

# batch data and predictions in engine.state.output, never logged as terms
_NOT_TERMS = frozenset({Keys.IMAGE, Keys.LABEL, Keys.PRED})


def _scalar(value: Any) -> float | None:
    """``value`` as a float if it is a scalar term (1-element tensor or real number, not a bool), else None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        return float(value.detach().float().reshape(()))
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    return None


def loss_terms(output: Any) -> dict[str, float]:
    """Every scalar term of a trainer output: ``{"loss": ..., "sup_loss": ..., <each term the method returns>}``.

    Use as a StatsHandler / TensorBoardStatsHandler ``output_transform``. A term is any entry that is a 0-dim or
    1-element tensor or a Python/NumPy real number (bools excluded), apart from ``image``, ``label`` and ``pred``;
    so a method's new term (a second phase's discriminator loss, a ramped weight, a learned threshold) is logged
    without a list to keep in sync, and tensors such as extra predictions are skipped. ``loss`` comes first, the
    others in the output's order. Accepts the decollated form (a list of per-item dicts, whose scalars MONAI
    replicates per item) too.

    Args:
        output: ``engine.state.output``.

    Returns:
        The scalar terms as floats.
    """
    if isinstance(output, (list, tuple)):
        output = output[0] if output else {}
    if not isinstance(output, Mapping):
        return {}
    terms: dict[str, float] = {}
    for key in [Keys.LOSS] + [k for k in output if k != Keys.LOSS]:
        if key in _NOT_TERMS or key not in output:
            continue
        value = _scalar(output[key])
        if value is not None:
            terms[str(key)] = value
    return terms


def image_filenames(batch: Any) -> list[str]:
    """File names of the ``image`` entries of a batch, collated (one dict) or decollated (a list of dicts).

    Reads ``filename_or_obj`` from the MetaTensor's meta or from ``image_meta_dict``; items without one contribute
    nothing.

    Args:
        batch: ``engine.state.batch`` or a single data item.

    Returns:
        The file names, in batch order.
    """
    names: list[str] = []
    for item in batch if isinstance(batch, (list, tuple)) else [batch]:
        if not isinstance(item, Mapping):
            continue
        image = item.get(Keys.IMAGE)
        meta = getattr(image, "meta", None) or item.get(f"{Keys.IMAGE}_meta_dict") or {}
        value = meta.get("filename_or_obj", [])
        names += [str(n) for n in (value if isinstance(value, (list, tuple)) else [value])]
    return names
