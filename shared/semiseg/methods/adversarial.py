"""DAN: deep adversarial networks (Zhang et al., MICCAI 2017) in the SSL4MIS 3D setup."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from torch import nn

from semiseg.keys import SSLKeys
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["AdversarialMethod", "DISCRIMINATOR", "LABELLED", "UNLABELLED", "DISCRIMINATOR_LOSS"]

DISCRIMINATOR = "discriminator"  # the part's name in train#trainer#networks and its optimiser's in ...#optimizers
LABELLED, UNLABELLED = 1, 0  # the discriminator's classes: prediction of a labelled ("real") / unlabelled image
DISCRIMINATOR_LOSS = "discriminator_loss"  # the second phase's logged term


@contextlib.contextmanager
def _mode(module: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Put ``module`` in train (``True``) or eval mode for the block, then back in the mode it had."""
    previous = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(previous)


class AdversarialMethod(SSLMethod):
    """Student ``L = L_sup(s(x_l), y_l) + w(t) CE(D(softmax(s(x_u)), x_u), labelled)``; discriminator step
    ``CE(D([p_l, p_u], [x_l, x_u]), [labelled, unlabelled])``.

    Zhang et al., "Deep Adversarial Networks for Biomedical Image Segmentation Utilizing Unannotated Images",
    MICCAI 2017, Sec. 2 (Eq. 1-3: the segmentation network is trained to make the evaluation network score its
    predictions on unannotated images as those of annotated ones, the evaluation network to tell them apart); as
    SSL4MIS ``train_adversarial_network_3D.py`` implements it (docs/architecture.md §3):

    - main phase (:meth:`compute`): the student sees the labelled and the unlabelled batch in one forward pass; the
      discriminator ``D`` (:class:`semiseg.networks.FC3DDiscriminator`, the part ``"discriminator"`` of
      ``train#trainer#networks``) runs in eval mode (no dropout) on the unlabelled softmax and images, and the
      student's adversarial term is the two-class cross-entropy towards "labelled" (class 1), weighted by
      ``w(t) = engine.state.consistency_weight`` (:class:`~semiseg.handlers.ConsistencyRampUp`; the reference's
      ``0.1 * sigmoid_rampup(iter // 150, 200)``). The main backward pass also gives ``D`` gradients; ``D`` is in no
      main-phase optimiser, and the trainer zeroes its optimiser's gradients before the second phase, so they are
      never applied;
    - second phase (:meth:`second_phase`, the optimiser ``"discriminator"`` of ``train#trainer#optimizers``, Adam
      1e-4, betas (0.9, 0.99)): the student, just updated, predicts both batches again in eval mode without gradient
      (as the reference does), and ``D`` (train mode, dropout on) is trained with cross-entropy to score the labelled
      predictions "labelled" (1) and the unlabelled ones "unlabelled" (0). The reference scores the student's
      predictions on labelled images as "real", not the ground truth, and so does this method.

    Two logits with cross-entropy are the reference's parametrisation; ``CE([a, b], 1) = BCE(sigmoid(b - a), 1)``,
    so it is the binary cross-entropy of the paper on the logit difference.

    Args:
        supervised_loss: see :class:`SSLMethod` (default the SSL4MIS ``0.5 (CE + Dice)``).

    Logged terms: ``sup_loss``, ``unsup_loss`` (the adversarial term), ``consistency_weight`` and
    ``discriminator_loss``.
    """

    required_state = (SSLKeys.CONSISTENCY_WEIGHT,)
    required_networks = (DISCRIMINATOR,)
    second_phase_optimizer = DISCRIMINATOR

    @staticmethod
    def discriminator_loss(scores: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
        """Mean two-class cross-entropy of discriminator logits ``(B, 2)`` against ``target`` (a class or ``(B,)``)."""
        if scores.dim() != 2 or scores.shape[1] != 2:
            raise ValueError(
                f"the discriminator must return (batch, 2) logits (unlabelled, labelled), got {tuple(scores.shape)}."
            )
        if not isinstance(target, torch.Tensor):
            target = torch.full((scores.shape[0],), int(target), dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores.float(), target.to(scores.device, torch.long))

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert unlabelled is not None  # checked in __call__
        logits_l, logits_u, supervised = self.supervised_forward(engine, labelled, unlabelled)
        with _mode(self.network(engine, DISCRIMINATOR), training=False) as discriminator:
            scores = discriminator(torch.softmax(logits_u, dim=1), unlabelled)
        adversarial = self.discriminator_loss(scores, LABELLED)
        return self.weighted_loss(engine, logits_l, supervised, adversarial)

    def second_phase(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None, outputs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, _ = labelled
        assert unlabelled is not None  # checked in __call__
        both = torch.cat([images, unlabelled], dim=0)
        with torch.no_grad(), _mode(engine.network, training=False) as student:
            probs = torch.softmax(student(both), dim=1)
        scores = self.network(engine, DISCRIMINATOR)(probs, both)
        targets = torch.cat([
            torch.full((images.shape[0],), LABELLED, dtype=torch.long),
            torch.full((unlabelled.shape[0],), UNLABELLED, dtype=torch.long),
        ])
        loss = self.discriminator_loss(scores, targets)
        return loss, {DISCRIMINATOR_LOSS: loss.detach()}
