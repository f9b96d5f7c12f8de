"""Losses shared by the semi-supervised methods: one concept per file, re-exported here."""

from __future__ import annotations

from .consistency import softmax_mse
from .entropy import entropy_loss, entropy_map
from .gaussian_kl import gaussian_kl
from .supervised import ssl4mis_dice_ce

__all__ = ["softmax_mse", "entropy_loss", "entropy_map", "gaussian_kl", "ssl4mis_dice_ce"]
