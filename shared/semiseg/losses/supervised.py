"""The supervised loss of the SSL4MIS / UA-MT reference setup, expressed with MONAI's DiceCELoss."""

from __future__ import annotations

from monai.losses import DiceCELoss

from semiseg.settings import flag

__all__ = ["ssl4mis_dice_ce"]


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
