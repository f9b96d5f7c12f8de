"""Entropy minimisation (Grandvalet & Bengio, NeurIPS 2004; Vu et al., ADVENT, CVPR 2019) in the SSL4MIS 3D setup."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine

from semiseg.keys import SSLKeys
from semiseg.losses import entropy_loss
from semiseg.methods.base import LabelledBatch, SSLMethod
from semiseg.settings import flag

__all__ = ["EntropyMinimisationMethod"]


class EntropyMinimisationMethod(SSLMethod):
    """``L = L_sup(s(x_l), y_l) + w(t) * mean_voxels(-sum_c p log(p + 1e-6) / log C)``, ``p = softmax(s([x_l, x_u]))``.

    Grandvalet & Bengio, "Semi-supervised Learning by Entropy Minimization", NeurIPS 2004, Eq. 2 (the entropy of the
    predictions on unlabelled data as a regulariser); Vu et al., "ADVENT: Adversarial Entropy Minimization for Domain
    Adaptation in Semantic Segmentation", CVPR 2019, Sec. 3.1 (the direct entropy loss: per-pixel entropy
    normalised by ``log C``, averaged over pixels); SSL4MIS ``train_entropy_minimization_3D.py``
    (docs/architecture.md §3). No teacher: the student sees the labelled and unlabelled images in one forward pass
    (:meth:`SSLMethod.student_forward`), the entropy term is :func:`semiseg.losses.entropy_loss`, and ``w(t)`` is
    ``engine.state.consistency_weight`` (:class:`~semiseg.handlers.ConsistencyRampUp`; the reference's
    ``0.1 * sigmoid_rampup(iter // 150, 200)`` over its 30000 iterations, i.e. a ramp spanning the run).

    Args:
        supervised_loss: see :class:`SSLMethod`.
        include_labelled: ``True`` (default): the entropy of the whole batch, labelled and unlabelled predictions, as
            the reference computes it (SSL4MIS ``train_entropy_minimization_3D.py``: ``losses.entropy_loss`` of the
            softmax of the whole batch); ``False``: the unlabelled predictions only, the regulariser of Grandvalet &
            Bengio (2004, Eq. 2). ``"true"`` / ``"false"`` strings (the command line's) are read as booleans.

    Raises:
        ValueError: if ``include_labelled`` is not a boolean.
    """

    required_state = (SSLKeys.CONSISTENCY_WEIGHT,)

    def __init__(self, supervised_loss: torch.nn.Module | None = None, include_labelled: bool = True) -> None:
        super().__init__(supervised_loss)
        self.include_labelled = flag(include_labelled, "method#include_labelled")

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        assert unlabelled is not None  # checked in __call__
        logits_l, logits_u, supervised = self.supervised_forward(engine, labelled, unlabelled)
        logits = torch.cat([logits_l, logits_u]) if self.include_labelled else logits_u
        unsupervised = entropy_loss(torch.softmax(logits.float(), dim=1))
        return self.weighted_loss(engine, logits_l, supervised, unsupervised)
