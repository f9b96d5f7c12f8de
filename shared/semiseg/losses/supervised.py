"""The supervised losses of the reference setups, expressed with MONAI's Dice losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from semiseg.settings import flag

__all__ = ["ClassWeightedDiceCELoss", "ssl4mis_dice_ce"]


def ssl4mis_dice_ce(include_background: bool | str = True) -> DiceCELoss:
    """``0.5 (CE + Dice)`` with the SSL4MIS Dice ``1 - (2 sum(s t) + 1e-5) / (sum s^2 + sum t^2 + 1e-5)``.

    The Dice is summed over the whole batch per class and averaged over classes (SSL4MIS ``utils/losses.py::
    DiceLoss`` with ``softmax=True``); MONAI's ``DiceLoss(squared_pred=True, batch=True, smooth_nr=smooth_dr=1e-5)``
    matches it to 1e-6, with ``batch=False`` it does not (docs/architecture.md §3). Yu et al., UA-MT, MICCAI 2019
    use the foreground Dice only (UA-MT ``train_LA_meanteacher_certainty_unlabel.py``: ``dice_loss(outputs_soft[:,
    1], label == 1)``): ``include_background=False``, the bundles' setting ``dice_include_background`` (false in
    ``configs/la.json``); the cross-entropy takes every class either way, as in both references.

    Args:
        include_background: include class 0 in the Dice average (a boolean, or the command line's ``"true"`` /
            ``"false"``).

    Returns:
        A ``DiceCELoss`` taking logits ``(B, C, *spatial)`` and integer labels ``(B, 1, *spatial)``.

    Raises:
        ValueError: if ``include_background`` is not a boolean.
    """
    return DiceCELoss(
        include_background=flag(include_background, "dice_include_background"),
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=0.5,
        lambda_ce=0.5,
    )


class ClassWeightedDiceCELoss(nn.Module):
    """``lambda_dice sum_c w_c D_c / C + lambda_ce CE``: the SSL4MIS Dice with a weight per class, plus cross-entropy.

    UGPCL's supervised loss (Wang et al., IJCAI 2022; reference code ``taovv/UGPCL`` ``codes/losses/losses.py``
    ``DiceLoss_`` with ``class_weight [0, 1, 1, 1]`` and ``CrossEntropyLoss_``, 0.5 each, in
    ``configs/_trainers/ugpcl.yaml``): ``D_c = 1 - (2 sum(s t) + 1e-5) / (sum s^2 + sum t^2 + 1e-5)`` of class ``c``
    over the whole batch (MONAI ``DiceLoss(squared_pred=True, batch=True, smooth_nr=smooth_dr=1e-5)``, its ``weight``
    per class), averaged over all ``C`` classes: a weight 0 takes the background out of the sum, which is still divided
    by ``C``, as the reference divides by ``n_classes``. ``DiceCELoss``'s ``weight`` would also weight the
    cross-entropy, which the reference leaves unweighted.

    Args:
        class_weight: ``C`` non-negative weights (``[0, 1, ..., 1]``: no background).
        lambda_dice: weight of the Dice term (0.5).
        lambda_ce: weight of the cross-entropy (0.5).

    Raises:
        ValueError: on fewer than two or negative class weights, or a negative lambda.
    """

    def __init__(self, class_weight: Sequence[float], lambda_dice: float = 0.5, lambda_ce: float = 0.5) -> None:
        super().__init__()
        weights = [float(w) for w in class_weight]
        if len(weights) < 2 or min(weights) < 0:
            raise ValueError(f"class_weight must hold one weight >= 0 per class (at least 2), got {weights}.")
        if lambda_dice < 0 or lambda_ce < 0:
            raise ValueError(f"lambda_dice and lambda_ce must be >= 0, got {lambda_dice} and {lambda_ce}.")
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True, smooth_nr=1e-5,
                             smooth_dr=1e-5, weight=torch.tensor(weights))
        self.cross_entropy = nn.CrossEntropyLoss()

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, *spatial)`` against integer labels ``(B, 1, *spatial)``.

        Raises:
            ValueError: if the logits do not have one channel per class weight.
        """
        if logits.shape[1] != self.dice.class_weight.numel():
            raise ValueError(f"logits have {logits.shape[1]} channels for {self.dice.class_weight.numel()} class "
                             "weights: give one weight per class.")
        cross_entropy = self.cross_entropy(logits, labels[:, 0].long())
        return self.lambda_dice * self.dice(logits, labels) + self.lambda_ce * cross_entropy
