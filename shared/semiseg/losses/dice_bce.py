"""Binary ``0.5 Dice + 0.5 BCE`` on one sigmoid channel (Bayesian Pseudo Labels' supervised and pseudo loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

__all__ = ["BinaryDiceBCELoss"]


class BinaryDiceBCELoss(nn.Module):
    """``0.5 (1 - (2 sum(p y) + 1) / (sum p + sum y + 1)) + 0.5 BCE(logits, y)``, ``p = sigmoid(logits / temp)``.

    The loss of Xu et al., "Bayesian Pseudo Labels", MICCAI 2022 (reference code ``calculate_sup_loss`` /
    ``calculate_pseudo_loss``): the nnU-Net soft Dice (smooth 1, per item and channel, averaged; MONAI ``DiceLoss``
    with ``smooth_nr = smooth_dr = 1``, ``batch=False``) on the temperature-scaled probabilities plus the binary
    cross-entropy on the unscaled logits.

    Args:
        temp: temperature of the Dice's sigmoid (``temp`` in the reference, 1.0).

    Raises:
        ValueError: if ``temp`` is not > 0.
    """

    def __init__(self, temp: float = 1.0) -> None:
        super().__init__()
        if not float(temp) > 0:
            raise ValueError(f"temp must be > 0, got {temp!r}.")
        self.temp = float(temp)
        self.dice = DiceLoss(sigmoid=False, smooth_nr=1.0, smooth_dr=1.0, batch=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of one-channel logits ``(B, 1, *spatial)`` against a 0/1 target of the same shape.

        Raises:
            ValueError: if ``logits`` has more than one channel or the shapes differ.
        """
        if logits.dim() < 3 or logits.shape[1] != 1 or target.shape != logits.shape:
            raise ValueError(
                "BinaryDiceBCELoss takes one-channel logits (B, 1, *spatial) and a 0/1 target of the same shape, got "
                f"{tuple(logits.shape)} and {tuple(target.shape)} (a multi-class label must be binarised first)."
            )
        target = target.to(logits.dtype)
        dice = self.dice(torch.sigmoid(logits / self.temp), target)
        return 0.5 * dice + 0.5 * F.binary_cross_entropy_with_logits(logits, target)
