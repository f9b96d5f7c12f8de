"""Supervised baseline: the labelled loss only (the lower bound every SSL method is compared with)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine

from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["SupervisedMethod"]


class SupervisedMethod(SSLMethod):
    """``L = L_sup(f(x_l), y_l)``, the SSL4MIS ``train_fully_supervised_3D`` objective; no unlabelled data."""

    requires_unlabelled = False

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        logits = engine.network(images)
        loss = self.supervised_loss(logits, labels)
        return loss, self.outputs(logits, loss)
