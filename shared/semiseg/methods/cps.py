"""Cross Pseudo Supervision (Chen et al., CVPR 2021) in the SSL4MIS 3D setup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine

from semiseg.keys import SSLKeys
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["CrossPseudoSupervisionMethod", "SECOND_STUDENT", "hard_pseudo_labels", "cross_pseudo_loss"]

SECOND_STUDENT = "network_2"  # the second student's name in train#trainer#networks


def hard_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """``argmax_c softmax(logits)``, detached: ``(B, C, *spatial)`` logits -> ``(B, *spatial)`` class indices."""
    return logits.detach().argmax(dim=1)


def cross_pseudo_loss(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """``CE(logits, argmax(other_logits))``, the mean over voxels: one student supervised by the other's hard labels.

    Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision", CVPR 2021, Eq. 2
    (``L_cps``; SSL4MIS ``train_cross_pseudo_supervision_3D.py`` uses cross-entropy alone, no Dice, for this term).

    Args:
        logits: ``(B, C, *spatial)`` logits of the student being supervised.
        other_logits: the other student's logits on the same images; no gradient flows into them.

    Returns:
        The scalar loss.

    Raises:
        ValueError: if the shapes differ.
    """
    if logits.shape != other_logits.shape:
        raise ValueError(
            f"cross_pseudo_loss: the students' logits must have the same shape, got {tuple(logits.shape)} and "
            f"{tuple(other_logits.shape)}."
        )
    return F.cross_entropy(logits.float(), hard_pseudo_labels(other_logits))


class CrossPseudoSupervisionMethod(SSLMethod):
    """``L = sum_{i=1,2} [L_sup(f_i(x_l), y_l) + w(t) CE(f_i(x_u), argmax f_j(x_u))]``, ``j`` the other student.

    Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision", CVPR 2021, Eq. 1-3 (two
    differently initialised networks of one architecture, each supervised on labelled images and by the other's
    one-hot pseudo-labels on unlabelled images; ``L = L_s + lambda L_cps``), as SSL4MIS
    ``train_cross_pseudo_supervision_3D.py`` implements it (docs/architecture.md §3): ``L_sup`` is the
    ``0.5 (CE + Dice)`` of both students, the pseudo-label term cross-entropy only
    (:func:`cross_pseudo_loss`), ``w(t) = engine.state.consistency_weight``
    (:class:`~semiseg.handlers.ConsistencyRampUp`, the reference's ``0.1 * sigmoid_rampup(iter // 150, 200)``), and
    the two students' losses are summed and back-propagated once. The first student is the trainer's ``network``,
    the second the part ``"network_2"`` of ``train#trainer#networks``; each has its own optimiser (the second in
    ``train#trainer#optimizers``, stepped with the main one after the one backward pass, as the reference's two SGD
    optimisers). Each student sees the labelled and the unlabelled batch in one forward pass.

    Args:
        supervised_loss: see :class:`SSLMethod`.
        student_view: optional strong view of the unlabelled batch (:class:`semiseg.data.views.StrongView`;
            FixMatch, Sohn et al. 2020): each student is then trained on the strong view, and the pseudo-labels it
            gives the other come from its own prediction on the weak view (the crop as loaded), made without
            gradient in one extra forward pass per student. ``None`` (default) is the paper's method: pseudo-labels
            from the same forward pass.

    Logged terms: ``sup_loss`` and ``unsup_loss`` (both students' sums), ``consistency_weight``, ``student_1_loss``
    and ``student_2_loss`` (each student's weighted total, the reference's ``model1_loss`` / ``model2_loss``).
    """

    required_state = (SSLKeys.CONSISTENCY_WEIGHT,)
    required_networks = (SECOND_STUDENT,)

    def __init__(
        self,
        supervised_loss: torch.nn.Module | None = None,
        student_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(supervised_loss)
        self.student_view = student_view

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        assert unlabelled is not None  # checked in __call__
        students = (engine.network, self.network(engine, SECOND_STUDENT))
        student_u = unlabelled if self.student_view is None else self.student_view(unlabelled)
        logits = [self.student_forward(student, images, student_u) for student in students]
        if self.student_view is None:
            targets = [logits_u for _, logits_u in logits]
        else:
            with torch.no_grad():
                targets = [student(unlabelled) for student in students]
        weight = float(self.state(engine, SSLKeys.CONSISTENCY_WEIGHT))
        supervised = [self.supervised_loss(logits_l, labels) for logits_l, _ in logits]
        pseudo = [cross_pseudo_loss(logits[i][1], targets[1 - i]) for i in (0, 1)]
        totals = [supervised[i] + weight * pseudo[i] for i in (0, 1)]
        out = self.outputs(logits[0][0], supervised[0] + supervised[1], pseudo[0] + pseudo[1])
        out[SSLKeys.CONSISTENCY_WEIGHT.value] = torch.tensor(weight)
        out["student_1_loss"], out["student_2_loss"] = (total.detach() for total in totals)
        return totals[0] + totals[1], out
