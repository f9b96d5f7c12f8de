"""Interpolation Consistency Training (Verma et al., IJCAI 2019) in the SSL4MIS 3D setup."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine

from semiseg.keys import SSLKeys
from semiseg.methods.base import LabelledBatch
from semiseg.methods.mean_teacher import MeanTeacherMethod

__all__ = ["ICTMethod", "interpolate_pairs"]


def interpolate_pairs(batch: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``Mix_lam(a, b) = lam * a + (1 - lam) * b`` of the first half of a batch with its second half.

    Verma et al., "Interpolation Consistency Training for Semi-Supervised Learning", IJCAI 2019, Sec. 3 (the
    ``Mix_lambda`` operator); SSL4MIS ``train_interpolation_consistency_training_3D.py`` mixes the unlabelled batch's
    item 0 with its item 1 (docs/architecture.md §3). With ``n = B // 2`` pairs, item ``i`` of the result mixes items
    ``i`` and ``i + n``; the last item of an odd batch has no partner and is left out.

    Args:
        batch: ``(B, ...)``: images, or probabilities.
        lam: ``(B // 2,)`` mixing factors, one per pair.

    Returns:
        ``(B // 2, ...)``, the mixes (empty for ``B < 2``).

    Raises:
        ValueError: if ``lam`` is not one factor per pair.
    """
    n = batch.shape[0] // 2
    if lam.shape != (n,):
        raise ValueError(
            f"ICT needs one mixing factor per pair of the {batch.shape[0]}-item batch, shape ({n},), got "
            f"{tuple(lam.shape)}."
        )
    lam = lam.to(device=batch.device, dtype=batch.dtype).view(n, *([1] * (batch.dim() - 1)))
    return lam * batch[:n] + (1.0 - lam) * batch[n : 2 * n]


class ICTMethod(MeanTeacherMethod):
    """``L = L_sup(s(x_l), y_l) + w(t) * mean((softmax(s(Mix(u_a, u_b))) - Mix(softmax(T(u_a)), softmax(T(u_b))))^2)``.

    Verma et al., "Interpolation Consistency Training for Semi-Supervised Learning", IJCAI 2019, Sec. 3 and
    Algorithm 1; the 3D setup of SSL4MIS ``train_interpolation_consistency_training_3D.py`` (docs/architecture.md
    §3). The unlabelled batch is split into halves ``u_a`` (first half) and ``u_b`` (second half), which hold distinct
    cases (the loader's batches are distinct cases, the crops of one case adjacent); pair ``i`` gets its own
    ``lam_i ~ Beta(alpha, alpha)`` (the reference draws one per pair; with its 2 unlabelled cases that is one per
    iteration). The student sees the labelled images and the mixes ``lam u_a + (1 - lam) u_b`` in one forward
    pass, as the reference (the supervised loss is on the labelled part of that pass); the EMA teacher ``T``
    (``engine.state.teacher``) predicts ``u_a`` and ``u_b`` in two passes without gradient or noise, as the
    reference, and the target is the same mix of its softmax outputs. ``w(t)`` is ``engine.state.consistency_weight``
    (:class:`~semiseg.handlers.ConsistencyRampUp`). The reference writes ``(1 - lam) u_0 + lam u_1``; with the
    symmetric ``Beta(alpha, alpha)`` that is the same distribution of mixes.

    The reference's batches are always full (2 unlabelled cases); the bundle drops a pass's short last unlabelled
    batch for the same reason. A batch that is short all the same (an unlabelled set smaller than one batch) has
    its odd last item left out; a batch of one case has no pair, and its iteration has no consistency term (with
    a warning).

    ``lam`` is drawn with ``torch.distributions.Beta`` from torch's CPU generator, which the bundles seed
    (``monai.utils.set_determinism``) and checkpoint (:mod:`semiseg.handlers.random_state`), so a run and its resume
    draw the same factors.

    Args:
        supervised_loss: see :class:`~semiseg.methods.SSLMethod`.
        alpha: the Beta distribution's parameter: 0.2, SSL4MIS's ``ict_alpha``
            (``train_interpolation_consistency_training_3D.py``); the authors' code (vikasverma1077/ICT) runs
            ``--mixup_usup_alpha`` 1.0 on CIFAR-10 and 0.1 on SVHN (its README's commands; ``main.py`` defaults to 0).
        student_view: optional strong view (:class:`semiseg.data.views.StrongView`, FixMatch-style): applied to
            each unlabelled crop before the student's mix is built (so the student sees the mix of two strong views),
            while the teacher keeps the weak crops. ``None`` (default) is the paper's method.
        unlabelled_batch_items: the configured unlabelled batch (``unlabelled_batch_size x num_samples``), checked
            to be even; ``None`` skips the check.

    Raises:
        ValueError: if ``alpha`` is not positive or ``unlabelled_batch_items`` is odd or below 2.
    """

    def __init__(
        self,
        supervised_loss: torch.nn.Module | None = None,
        alpha: float = 0.2,
        student_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
        unlabelled_batch_items: int | None = None,
    ) -> None:
        super().__init__(supervised_loss, noise_std=0.0, student_view=student_view)
        if not alpha > 0:
            raise ValueError(f"ICT's Beta(alpha, alpha) needs alpha > 0, got {alpha!r}.")
        if unlabelled_batch_items is not None and (unlabelled_batch_items < 2 or unlabelled_batch_items % 2):
            raise ValueError(
                "ICT mixes the first half of every unlabelled batch with its second half, so the unlabelled batch "
                "(unlabelled_batch_size x num_samples) must be even and at least 2, got "
                f"{unlabelled_batch_items!r}."
            )
        self.alpha = float(alpha)

    def sample_lambda(self, num_pairs: int) -> torch.Tensor:
        """``num_pairs`` mixing factors ``lam ~ Beta(alpha, alpha)`` on the CPU (torch's seeded generator)."""
        concentration = torch.tensor(self.alpha, dtype=torch.float64)
        return torch.distributions.Beta(concentration, concentration).sample((num_pairs,)).float()

    @torch.no_grad()
    def teacher_forward(self, engine: Engine, unlabelled: torch.Tensor) -> torch.Tensor:
        """Teacher softmax on each half of the unlabelled batch (two passes, no noise, no gradient)."""
        teacher = self.state(engine, SSLKeys.TEACHER)
        n = unlabelled.shape[0] // 2
        return torch.cat([torch.softmax(teacher(half), dim=1) for half in (unlabelled[:n], unlabelled[n : 2 * n])])

    def consistency(
        self, engine: Engine, student_logits: torch.Tensor, teacher_probs: torch.Tensor, unlabelled: torch.Tensor
    ) -> torch.Tensor:
        """``mean((softmax(student_logits) - teacher_probs)^2)``: the target is a mix of probabilities."""
        return torch.mean((torch.softmax(student_logits, dim=1) - teacher_probs) ** 2)

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        assert unlabelled is not None  # checked in __call__
        num_pairs = unlabelled.shape[0] // 2
        lam = self.sample_lambda(num_pairs)
        student_u = unlabelled if self.student_view is None else self.student_view(unlabelled)
        mixed = interpolate_pairs(student_u, lam)
        logits_l, logits_mix = self.student_forward(engine.network, images, mixed)
        supervised = self.supervised_loss(logits_l, labels)
        if num_pairs:
            target = interpolate_pairs(self.teacher_forward(engine, unlabelled), lam)
            unsupervised = self.consistency(engine, logits_mix, target, mixed)
        else:
            warnings.warn(
                f"ICT: an unlabelled batch of {unlabelled.shape[0]} item has no pair of distinct cases to mix; this "
                "iteration has no consistency term (the unlabelled data set is smaller than one batch).",
                stacklevel=2,
            )
            unsupervised = torch.zeros((), device=logits_l.device)
        loss, out = self.weighted_loss(engine, logits_l, supervised, unsupervised)
        if num_pairs:
            out["mix_lambda"] = lam.mean()
        return loss, out
