"""Layer Ensembles (Kushibar et al., MICCAI 2022): the sum of the heads' supervised losses, and a Mean Teacher
variant whose student and teacher are layer-ensemble networks (semi-supervised single-pass uncertainty)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.losses import DeepSupervisionLoss
from torch import nn

from semiseg.losses import PresentClassDiceLoss, softmax_mse, ssl4mis_dice_ce
from semiseg.methods.base import LabelledBatch, SSLMethod
from semiseg.methods.mean_teacher import MeanTeacherMethod
from semiseg.networks.layer_ensembles import ensemble_log_probs

__all__ = [
    "HEAD_LOSSES", "LayerEnsemblesMeanTeacherMethod", "LayerEnsemblesMethod", "head_loss", "head_outputs",
    "layer_ensemble_loss",
]

HEAD_LOSSES = ("dice", "dice_ce")  # the bundle's head_loss setting: the reference's Dice, or 0.1.0's 0.5 (CE + Dice)


def head_loss(name: str = "dice") -> nn.Module:
    """The loss of one head, by the bundle setting ``head_loss``.

    - ``"dice"``: the reference's (``pianoza/LayerEnsembles@e5a4a88`` ``methods/commons.py`` lines 77-86, the
      criterion of every head in ``methods/base_method.py`` ``train_epoch``): the soft Dice over the batch, classes
      absent from the labels adding 0 (:class:`~semiseg.losses.PresentClassDiceLoss`);
    - ``"dice_ce"``: the SSL4MIS ``0.5 (CE + Dice)`` (:func:`~semiseg.losses.ssl4mis_dice_ce`), bundle 0.1.0's.

    Raises:
        ValueError: on another name, naming the setting.
    """
    if name not in HEAD_LOSSES:
        raise ValueError(f"setting head_loss must be one of {', '.join(HEAD_LOSSES)}, got {name!r}: pass --head_loss "
                         "dice or dice_ce.")
    return PresentClassDiceLoss() if name == "dice" else ssl4mis_dice_ce()


def layer_ensemble_loss(loss: nn.Module | None = None) -> DeepSupervisionLoss:
    """``L = sum_h loss(z_h, y)`` over every head, equal weights (MONAI ``DeepSupervisionLoss``, ``"same"``).

    Kushibar et al., "Layer Ensembles", MICCAI 2022, Sec. 2.1; the reference ``train_epoch`` adds the heads' losses
    with weight 1 each (``methods/base_method.py`` lines 277-281; docs/architecture.md §3), each head's logits
    upsampled to the label's size. A loss that already is a ``DeepSupervisionLoss`` is returned as is.

    Args:
        loss: the loss of one head's logits ``(B, C, *spatial)`` against integer labels ``(B, 1, *spatial)``;
            default the reference's Dice (``head_loss("dice")``).

    Returns:
        A loss taking the list of head logits and the labels.
    """
    if isinstance(loss, DeepSupervisionLoss):
        return loss
    return DeepSupervisionLoss(head_loss("dice") if loss is None else loss, weight_mode="same")


def head_outputs(output: Any, who: str) -> list[torch.Tensor]:
    """The list of head logits a :class:`~semiseg.networks.LayerEnsembles` network returns in training mode.

    Raises:
        TypeError: naming ``who`` and what the network returned instead.
    """
    if not isinstance(output, Sequence) or not output or not all(isinstance(z, torch.Tensor) for z in output):
        raise TypeError(
            f"{who} needs a network that returns one logits tensor per head in training mode "
            f"(semiseg.networks.LayerEnsembles), got {type(output).__name__}."
        )
    return list(output)


class LayerEnsemblesMethod(SSLMethod):
    """``L = sum_h L_sup(z_h(x_l), y_l)``: every head of a layer-ensemble network trained on the labelled batch.

    Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for Segmentation",
    MICCAI 2022, Sec. 2.1 (docs/architecture.md §3); a supervised method (no unlabelled batch), whose uncertainty
    comes at test time from the heads' disagreement. The logged ``pred`` is the network's own (deepest) output.

    Args:
        supervised_loss: the loss of ONE head (default the reference's Dice, :func:`head_loss`), summed over the
            heads by :func:`layer_ensemble_loss`.
    """

    requires_unlabelled = False

    def __init__(self, supervised_loss: nn.Module | None = None) -> None:
        super().__init__(layer_ensemble_loss(supervised_loss))

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        heads = head_outputs(engine.network(images), type(self).__name__)
        loss = self.supervised_loss(heads, labels)
        return loss, self.outputs(heads[-1], loss)


class LayerEnsemblesMeanTeacherMethod(MeanTeacherMethod):
    """Mean Teacher with layer-ensemble student and teacher: ``L = sum_h L_sup(z_h) + w(t) mse(pbar_s, pbar_t)``.

    Beyond the paper: the supervised term is :func:`layer_ensemble_loss` on the labelled part of the student's
    heads; the consistency is Mean Teacher's softmax MSE (Tarvainen & Valpola, NeurIPS 2017; docs/architecture.md
    §3) between the ensembles ``pbar = mean_h softmax(z_h)`` of the student's and the teacher's heads after the first
    ``skip_first`` (:func:`~semiseg.networks.layer_ensembles.ensemble_log_probs`, whose softmax is ``pbar``). The
    teacher is the EMA copy of the whole wrapper, heads included. Everything else is :class:`MeanTeacherMethod`.

    Args:
        supervised_loss: the loss of one head (default the reference's Dice, :func:`head_loss`), summed over the heads.
        skip_first: heads left out of the consistency ensemble (the network's ``skip_first``).
        kwargs: :class:`MeanTeacherMethod`'s noise and view settings.

    Raises:
        ValueError: on a negative ``skip_first``, or as :class:`MeanTeacherMethod`.
    """

    def __init__(self, supervised_loss: nn.Module | None = None, skip_first: int = 0, **kwargs: Any) -> None:
        super().__init__(layer_ensemble_loss(supervised_loss), **kwargs)
        if skip_first < 0:
            raise ValueError(f"skip_first must be >= 0, got {skip_first}.")
        self.skip_first = int(skip_first)

    def student_forward(  # type: ignore[override]
        self, network: nn.Module, images: torch.Tensor, unlabelled: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every head's logits on the labelled and the unlabelled batch, from one forward pass over both."""
        heads = head_outputs(network(torch.cat([images, unlabelled], dim=0)), type(self).__name__)
        n = images.shape[0]
        return [z[:n] for z in heads], [z[n:] for z in heads]

    def _ensemble(self, logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Log of the ensemble's mean probability; an eval-mode wrapper's output already is one."""
        return logits if isinstance(logits, torch.Tensor) else ensemble_log_probs(logits, self.skip_first)

    def consistency(  # type: ignore[override]
        self,
        engine: Engine,
        student_logits: torch.Tensor | Sequence[torch.Tensor],
        teacher_logits: torch.Tensor | Sequence[torch.Tensor],
        unlabelled: torch.Tensor,
    ) -> torch.Tensor:
        return softmax_mse(self._ensemble(student_logits), self._ensemble(teacher_logits))

    def outputs(  # type: ignore[override]
        self, logits: torch.Tensor | Sequence[torch.Tensor], supervised: torch.Tensor, unsupervised: Any = None
    ) -> dict:
        """As :meth:`SSLMethod.outputs`, with the student's deepest output as ``pred``."""
        final = logits if isinstance(logits, torch.Tensor) else logits[-1]
        return SSLMethod.outputs(final, supervised, unsupervised)
