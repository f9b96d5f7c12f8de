"""Losses shared by the semi-supervised methods: one concept per file, re-exported here."""

from __future__ import annotations

from .consistency import softmax_mse
from .contrastive import pixel_contrastive_loss
from .dice_bce import BinaryDiceBCELoss
from .entropy import entropy_loss, entropy_map
from .gaussian_kl import gaussian_kl
from .present_class_dice import PresentClassDiceLoss
from .pyramid import uncertainty_rectified_pyramid_loss
from .supervised import ClassWeightedDiceCELoss, ssl4mis_dice_ce
from .uncertainty import uncertainty_masked_mse

__all__ = ["softmax_mse", "entropy_loss", "entropy_map", "gaussian_kl", "ssl4mis_dice_ce", "uncertainty_masked_mse",
           "uncertainty_rectified_pyramid_loss", "BinaryDiceBCELoss"]
__all__ += ["pixel_contrastive_loss", "ClassWeightedDiceCELoss", "PresentClassDiceLoss"]
