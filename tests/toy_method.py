"""A test-only method with a second trainable part, trained in a second update phase by its own optimiser.

It has the shape of DAN (Zhang et al., "Deep Adversarial Networks for Biomedical Image Segmentation Utilizing
Unannotated Images", MICCAI 2017) and of MONAI's ``AdversarialTrainer``, small enough for CPU tests: a critic scores
softmax predictions as "labelled" (1) or "unlabelled" (0). The main loss is the supervised loss plus
``critic_weight`` times the student's fooling term (the critic should score unlabelled predictions as labelled), so
the main backward pass also gives the critic gradients, which the critic's optimiser must never apply; the second
phase trains the critic on detached predictions. The critic has buffers that change at every forward pass in train
mode (a step counter and a running mean of its input) and the method has state of its own (``_state_attrs``), so a
checkpoint round trip has something to lose.

Usable from a bundle config: ``{"_target_": "tests.toy_method.ToyCritic", "in_channels": "@num_classes"}`` and
``{"_target_": "tests.toy_method.ToyCriticMethod"}``, with ``train#trainer#networks = {"critic": "@critic"}``,
``train#trainer#optimizers = {"critic": "@critic_optimizer"}`` and a ``semiseg.handlers.RampScheduler`` for
``critic_weight`` in ``train#handlers``.
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine
from monai.utils import CommonKeys as Keys
from torch import nn

from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["ToyCritic", "ToyCriticMethod", "CRITIC_WEIGHT", "PRED_UNLABELLED"]

CRITIC_WEIGHT = "critic_weight"  # engine.state attribute (a RampScheduler's param_name), also logged
PRED_UNLABELLED = "pred_unlabelled"  # outputs entry: student logits on the unlabelled batch, for the second phase


class ToyCritic(nn.Module):
    """A tiny 3D conv critic: ``(B, C, D, H, W)`` probabilities -> ``(B,)`` logits.

    Buffers: ``steps`` (forward passes in train mode) and ``input_mean`` (running per-channel mean of its input,
    momentum ``momentum``), both updated at every forward pass in train mode, like BatchNorm statistics.

    Args:
        in_channels: channels of the input (the segmentation's number of classes).
        features: channels of the one convolution.
        momentum: update rate of ``input_mean``.

    Raises:
        ValueError: on ``in_channels`` or ``features`` < 1, or ``momentum`` outside (0, 1].
    """

    def __init__(self, in_channels: int = 3, features: int = 4, momentum: float = 0.1) -> None:
        super().__init__()
        if in_channels < 1 or features < 1:
            raise ValueError(f"in_channels and features must be >= 1, got {in_channels!r} and {features!r}.")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum!r}.")
        self.momentum = float(momentum)
        self.conv = nn.Conv3d(in_channels, features, kernel_size=3, padding=1)
        self.head = nn.Linear(features, 1)
        self.steps: torch.Tensor
        self.input_mean: torch.Tensor
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("input_mean", torch.zeros(in_channels))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.steps += 1
                self.input_mean.lerp_(probs.detach().float().mean(dim=(0, 2, 3, 4)), self.momentum)
        features = torch.relu(self.conv(probs)).mean(dim=(2, 3, 4))
        return self.head(features).squeeze(1)


class ToyCriticMethod(SSLMethod):
    """``L = L_sup + w * BCE(critic(softmax(s(x_u))), 1)``; second phase ``BCE(critic([p_l, p_u]), [1, 0])``.

    ``w`` is ``engine.state.critic_weight`` (a ``RampScheduler``); ``p_l``, ``p_u`` are the detached softmax
    predictions of the main phase on the labelled and unlabelled batches.

    Args:
        supervised_loss: see :class:`semiseg.methods.SSLMethod`.

    Attributes:
        updates: second-phase updates done (a number in ``_state_attrs``).
        critic_score: running mean of the critic's second-phase scores (a tensor in ``_state_attrs``).
    """

    required_state = (CRITIC_WEIGHT,)
    required_networks = ("critic",)
    second_phase_optimizer = "critic"
    _state_attrs = ("updates", "critic_score")

    def __init__(self, supervised_loss: nn.Module | None = None) -> None:
        super().__init__(supervised_loss)
        self.bce = nn.BCEWithLogitsLoss()
        self.updates = 0
        self.critic_score = torch.zeros(())

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert unlabelled is not None  # checked in __call__
        logits_l, logits_u, supervised = self.supervised_forward(engine, labelled, unlabelled)
        scores = self.network(engine, "critic")(torch.softmax(logits_u, dim=1))
        fooling = self.bce(scores.float(), torch.ones_like(scores, dtype=torch.float32))
        loss, out = self.weighted_loss(engine, logits_l, supervised, fooling, weight_key=CRITIC_WEIGHT)
        out[PRED_UNLABELLED] = logits_u
        return loss, out

    def second_phase(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None, outputs: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        real = torch.softmax(outputs[Keys.PRED].detach(), dim=1)
        fake = torch.softmax(outputs[PRED_UNLABELLED].detach(), dim=1)
        scores = self.network(engine, "critic")(torch.cat([real, fake], dim=0)).float()
        targets = torch.cat([torch.ones(real.shape[0]), torch.zeros(fake.shape[0])]).to(scores.device)
        loss = self.bce(scores, targets)
        self.updates += 1
        self.critic_score = torch.lerp(self.critic_score.to(scores.device), scores.detach().mean(), 0.5)
        return loss, {"critic_loss": loss.detach(), "critic_score": self.critic_score, "critic_updates": self.updates}
