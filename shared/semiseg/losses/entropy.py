"""Prediction entropy: a loss (entropy minimisation) and a per-voxel uncertainty map."""

from __future__ import annotations

import math

import torch

__all__ = ["entropy_map", "entropy_loss"]


def entropy_map(probs: torch.Tensor, eps: float = 1e-6, dim: int = 1, normalise: bool = True) -> torch.Tensor:
    """Per-voxel entropy ``-sum_c p_c log(p_c + eps)``, divided by ``log C`` when ``normalise``.

    Args:
        probs: class probabilities, classes along ``dim`` (``(B, C, *spatial)`` by default).
        eps: added inside the log, 1e-6 as in SSL4MIS ``losses.entropy_loss``.
        dim: the class dimension.
        normalise: divide by ``log C`` so the map lies in [0, 1].

    Returns:
        The entropy with ``dim`` kept as size 1.

    Raises:
        ValueError: if there are fewer than two classes along ``dim``.
    """
    num_classes = probs.shape[dim]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes along dim {dim}, got shape {tuple(probs.shape)}.")
    ent = -(probs * torch.log(probs + eps)).sum(dim=dim, keepdim=True)
    return ent / math.log(num_classes) if normalise else ent


def entropy_loss(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Entropy minimisation loss: mean over voxels of ``-sum_c p log(p + 1e-6) / log C``.

    Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004, Eq. 2; Vu et al.,
    ADVENT, CVPR 2019, Eq. 1 (normalised by log C); SSL4MIS ``utils/losses.py::entropy_loss``. docs/architecture.md §3.

    Args:
        probs: softmax probabilities ``(B, C, *spatial)``.
        eps: added inside the log.

    Returns:
        Scalar mean normalised entropy.
    """
    return entropy_map(probs, eps=eps, dim=1, normalise=True).mean()
