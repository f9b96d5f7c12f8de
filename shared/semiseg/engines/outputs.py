"""Readers of ``engine.state.output`` for logging handlers (StatsHandler, TensorBoardStatsHandler)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.utils import CommonKeys as Keys

from semiseg.keys import SSLKeys

__all__ = ["loss_terms", "image_filenames"]

_TERMS = (Keys.LOSS, SSLKeys.SUPERVISED_LOSS.value, SSLKeys.UNSUPERVISED_LOSS.value, SSLKeys.CONSISTENCY_WEIGHT.value)


def loss_terms(output: Any) -> dict[str, float]:
    """``{"loss": ..., "sup_loss": ..., "unsup_loss": ..., "consistency_weight": ...}`` from a trainer output.

    Use as a StatsHandler / TensorBoardStatsHandler ``output_transform``; terms a method does not produce are left
    out. Accepts the decollated form (a list of per-item dicts) too.

    Args:
        output: ``engine.state.output``.

    Returns:
        The scalar terms as floats.
    """
    if isinstance(output, (list, tuple)):
        output = output[0] if output else {}
    if not isinstance(output, Mapping):
        return {}
    terms = {}
    for key in _TERMS:
        value = output.get(key)
        if value is not None:
            terms[key] = float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)
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
