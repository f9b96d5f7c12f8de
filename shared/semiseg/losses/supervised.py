"""The supervised loss of the SSL4MIS / UA-MT reference setup, expressed with MONAI's DiceCELoss."""

from __future__ import annotations

from monai.losses import DiceCELoss

__all__ = ["ssl4mis_dice_ce"]


def ssl4mis_dice_ce(include_background: bool = True) -> DiceCELoss:
    """``0.5 (CE + Dice)`` with the SSL4MIS Dice ``1 - (2 sum(s t) + 1e-5) / (sum s^2 + sum t^2 + 1e-5)``.

    The Dice is summed over the whole batch per class and averaged over classes (SSL4MIS ``utils/losses.py::
    DiceLoss`` with ``softmax=True``); MONAI's ``DiceLoss(squared_pred=True, batch=True, smooth_nr=smooth_dr=1e-5)``
    matches it to 1e-6, with ``batch=False`` it does not (docs/architecture.md §3). Yu et al., UA-MT, MICCAI 2019
    use the foreground Dice only: ``include_background=False``.

    Args:
        include_background: include class 0 in the Dice average.

    Returns:
        A ``DiceCELoss`` taking logits ``(B, C, *spatial)`` and integer labels ``(B, 1, *spatial)``.
    """
    return DiceCELoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        batch=True,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
        lambda_dice=0.5,
        lambda_ce=0.5,
    )
