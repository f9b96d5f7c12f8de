"""UA-MT: Mean Teacher whose consistency counts only where the teacher is certain (Yu et al., MICCAI 2019)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from ignite.engine import Engine

from semiseg.keys import SSLKeys
from semiseg.losses import entropy_map, uncertainty_masked_mse
from semiseg.methods.mean_teacher import MeanTeacherMethod

__all__ = ["UAMTMethod", "UncertainTeacherOutput"]


class UncertainTeacherOutput(NamedTuple):
    """What :meth:`UAMTMethod.teacher_forward` gives :meth:`UAMTMethod.consistency`.

    Attributes:
        logits: the teacher's logits on one noisy copy of the unlabelled batch ``(B, C, *spatial)``: the target.
        uncertainty: the entropy of the mean softmax of ``T`` further noisy passes ``(B, 1, *spatial)``, natural log.
    """

    logits: torch.Tensor
    uncertainty: torch.Tensor


class UAMTMethod(MeanTeacherMethod):
    """Uncertainty-aware Mean Teacher: ``L = L_sup + w(t) * sum(mask (softmax(s) - p_t)^2) / (C sum(mask) + 1e-16)``.

    Yu, Wang, Li, Fu & Heng, "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium
    Segmentation", MICCAI 2019, Sec. 2; SSL4MIS ``train_uncertainty_aware_mean_teacher_3D.py``
    (docs/architecture.md §3). Mean Teacher (:class:`MeanTeacherMethod`: the student, the supervised loss, the
    teacher noise, the ramped weight ``w(t)``, the optional strong student view) with two steps replaced:

    - :meth:`teacher_forward`: the EMA teacher (in train mode, so its dropout is on) sees ``T + 1`` copies of the
      unlabelled batch, each with its own noise from :meth:`sample_noise`, in ONE batched forward pass. As in the
      reference, the target ``p_t`` is the softmax of the first noisy pass, and the uncertainty is the entropy
      ``u = -sum_c m_c log(m_c + 1e-6)`` (natural log) of the mean softmax ``m`` of the other ``T`` passes
      (the reference runs ``T = 8`` such passes, two copies at a time);
    - :meth:`consistency`: :func:`semiseg.losses.uncertainty_masked_mse` with ``mask = u < H`` and
      ``H = r(t) ln C``, where ``r(t) = 0.75 + 0.25 sigmoid_rampup(iter, max_iter)`` is
      ``engine.state.uncertainty_threshold``, written by a :class:`semiseg.handlers.RampScheduler`
      (``start=0.75, end=1.0, length_fraction=1.0``). ``r`` is the threshold as a fraction of the maximum entropy
      ``ln C``, i.e. on the scale of the normalised entropy maps inference writes, so the same schedule serves any
      number of classes (the reference's ``ln 2`` for its two).

    Args:
        uncertainty_passes: ``T``, the noisy teacher passes the uncertainty is estimated from (8 in the paper).
        **kwargs: :class:`MeanTeacherMethod`'s arguments (``supervised_loss``, ``noise_std``, ``noise_clip``,
            ``noise_scale``, ``student_view``).

    Raises:
        ValueError: if ``uncertainty_passes`` is not an integer >= 1 (and see :class:`MeanTeacherMethod`).
    """

    required_state = (*MeanTeacherMethod.required_state, SSLKeys.UNCERTAINTY_THRESHOLD)

    def __init__(self, uncertainty_passes: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        passes = uncertainty_passes
        if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
            raise ValueError(f"uncertainty_passes must be an integer >= 1, got {passes!r}.")
        self.uncertainty_passes = passes

    @torch.no_grad()
    def teacher_forward(self, engine: Engine, unlabelled: torch.Tensor) -> UncertainTeacherOutput:  # type: ignore[override]
        """The teacher's target logits and uncertainty from one batched pass over ``T + 1`` noisy copies.

        Args:
            engine: the trainer (``engine.state.teacher``).
            unlabelled: the unlabelled batch ``(B, C_in, *spatial)`` (the weak view).

        Returns:
            The target logits (copy 0) and the entropy of the mean softmax of copies ``1..T``.
        """
        teacher = self.state(engine, SSLKeys.TEACHER)
        batch = unlabelled.shape[0]
        copies = unlabelled.repeat(self.uncertainty_passes + 1, *([1] * (unlabelled.dim() - 1)))
        logits = teacher(copies + self.sample_noise(copies))
        probs = torch.softmax(logits[batch:].float(), dim=1)
        mean_probs = probs.reshape(self.uncertainty_passes, batch, *probs.shape[1:]).mean(dim=0)
        return UncertainTeacherOutput(logits[:batch], entropy_map(mean_probs, eps=1e-6, dim=1, normalise=False))

    def consistency(  # type: ignore[override]
        self,
        engine: Engine,
        student_logits: torch.Tensor,
        teacher_logits: UncertainTeacherOutput,
        unlabelled: torch.Tensor,
    ) -> torch.Tensor:
        """The uncertainty-masked softmax MSE between the student and the teacher's target.

        Args:
            engine: the trainer (``engine.state.uncertainty_threshold``, a fraction of ``ln C``).
            student_logits: the student's logits on the unlabelled batch ``(B, C, *spatial)``.
            teacher_logits: what :meth:`teacher_forward` returned.
            unlabelled: the unlabelled batch (unused).

        Returns:
            The scalar loss.

        Raises:
            TypeError: if ``teacher_logits`` is not an :class:`UncertainTeacherOutput` (a plain Mean Teacher
                ``teacher_forward`` has no uncertainty).
        """
        if not isinstance(teacher_logits, UncertainTeacherOutput):
            raise TypeError(
                f"{type(self).__name__}.consistency needs the UncertainTeacherOutput of its teacher_forward, got "
                f"{type(teacher_logits).__name__}."
            )
        fraction = float(self.state(engine, SSLKeys.UNCERTAINTY_THRESHOLD))
        threshold = fraction * math.log(student_logits.shape[1])
        target = torch.softmax(teacher_logits.logits.float(), dim=1)
        return uncertainty_masked_mse(student_logits, target, teacher_logits.uncertainty, threshold)
