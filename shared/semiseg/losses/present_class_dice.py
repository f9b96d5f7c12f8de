"""Soft Dice over the batch in which a class absent from the labels adds nothing (Layer Ensembles' head loss)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import nn

__all__ = ["PresentClassDiceLoss"]


class PresentClassDiceLoss(nn.Module):
    """``mean_c [y_c present] (1 - (2 sum(p_c y_c) + s) / (sum p_c + sum y_c + s))``, ``p = softmax(logits)``.

    The loss every head of Layer Ensembles is trained with (Kushibar et al., MICCAI 2022; reference code
    ``pianoza/LayerEnsembles`` ``methods/commons.py`` ``get_criterion_for_task``: segmentation_models_pytorch's
    ``DiceLoss(mode="multiclass", classes=all, from_logits=True, smooth=1e-7)``): per class, the soft Dice of the
    softmax probabilities summed over the whole batch and all voxels (not squared), with the smoothing ``s`` in the
    numerator and the denominator; a class with no voxel in the batch's labels contributes 0 but still counts in the
    mean over all ``C`` classes (background included). The Dice itself is MONAI's ``DiceLoss(to_onehot_y=True,
    softmax=True, batch=True, reduction="none")``; only the mask of absent classes is added here.

    Args:
        smooth: ``s`` (1e-7, the reference's).

    Raises:
        ValueError: if ``smooth`` is negative.
    """

    def __init__(self, smooth: float = 1e-7) -> None:
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth!r}.")
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, batch=True, smooth_nr=float(smooth),
                             smooth_dr=float(smooth), reduction="none")

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, *spatial)`` against integer labels ``(B, 1, *spatial)``."""
        per_class = self.dice(logits, labels).reshape(-1)  # (C,): batch=True sums over the batch
        classes = torch.arange(logits.shape[1], device=labels.device).view(1, -1, *([1] * (labels.ndim - 2)))
        present = (labels.long() == classes).flatten(2).any(dim=2).any(dim=0)
        return (per_class * present.to(per_class)).mean()
