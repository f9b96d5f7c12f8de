"""Uncertainty Rectified Pyramid Consistency (Luo et al., MICCAI 2021) in the SSL4MIS 3D setup."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from monai.losses import DeepSupervisionLoss

from semiseg.keys import SSLKeys
from semiseg.losses import uncertainty_rectified_pyramid_loss
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["URPCMethod"]


class URPCMethod(SSLMethod):
    """``L = mean_s L_sup(s_s(x_l), y_l) + w(t) * L_urpc(s_1(x_u), ..., s_S(x_u))`` for a pyramid network.

    Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma Segmentation via
    Uncertainty Rectified Pyramid Consistency", MICCAI 2021, Sec. 2; SSL4MIS
    ``train_uncertainty_rectified_pyramid_consistency_3D.py`` (docs/architecture.md §3). The network (a
    :class:`~semiseg.networks.DeepSupervisionUNet`) returns ``S`` logits at the input size in training mode; one
    forward pass sees the labelled and the unlabelled images, as in the reference. The supervised loss is the mean
    over scales of ``supervised_loss`` on the labelled part (the reference's ``(sum_s CE_s + sum_s Dice_s) / 8`` for
    four scales: the mean of ``0.5 (CE_s + Dice_s)``), through MONAI's ``DeepSupervisionLoss`` with equal weights;
    the unsupervised loss is :func:`~semiseg.losses.uncertainty_rectified_pyramid_loss` on the unlabelled part,
    weighted by ``engine.state.consistency_weight`` (:class:`~semiseg.handlers.ConsistencyRampUp`, the reference's
    ``0.1 * sigmoid_rampup(iter // 150, 400)``). No teacher. In eval mode the network returns its main (finest)
    output alone, so validation, inference and MONAI Label need nothing of this method.

    Args:
        supervised_loss: loss on one scale's labelled logits and the labels; default the SSL4MIS ``0.5 (CE + Dice)``.
    """

    required_state = (SSLKeys.CONSISTENCY_WEIGHT,)

    def __init__(self, supervised_loss: torch.nn.Module | None = None) -> None:
        super().__init__(supervised_loss)
        self.pyramid_supervised_loss = DeepSupervisionLoss(self.supervised_loss, weight_mode="same")

    def pyramid_forward(
        self, engine: Engine, images: torch.Tensor, unlabelled: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every scale's logits on the labelled and on the unlabelled batch, from one forward pass over both.

        Raises:
            TypeError: if the network does not return a list of at least two logits in training mode.
        """
        outputs = engine.network(torch.cat([images, unlabelled], dim=0))
        if not isinstance(outputs, (list, tuple)) or len(outputs) < 2:
            got = type(outputs).__name__ + (f" of {len(outputs)}" if isinstance(outputs, (list, tuple)) else "")
            raise TypeError(
                f"{type(self).__name__} needs a network that returns a list of logits, one per pyramid scale, in "
                f"training mode (semiseg.networks.DeepSupervisionUNet as network_def), got a {got}."
            )
        n = images.shape[0]
        return [out[:n] for out in outputs], [out[n:] for out in outputs]

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        assert unlabelled is not None  # checked in __call__
        logits_l, logits_u = self.pyramid_forward(engine, images, unlabelled)
        supervised = self.pyramid_supervised_loss(logits_l, labels) / len(logits_l)
        unsupervised = uncertainty_rectified_pyramid_loss(logits_u)
        return self.weighted_loss(engine, logits_l[0], supervised, unsupervised)
