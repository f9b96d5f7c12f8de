"""Mean Teacher (Tarvainen & Valpola, NeurIPS 2017) in the SSL4MIS / UA-MT 3D setup."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.engine import Engine

from semiseg.keys import SSLKeys
from semiseg.losses import softmax_mse
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["MeanTeacherMethod", "NOISE_SCALES", "image_std", "teacher_noise"]


NOISE_SCALES = ("image_std", "absolute")


def teacher_noise(
    like: torch.Tensor,
    std: float = 0.1,
    clip: float = 0.2,
    generator: torch.Generator | None = None,
    scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Sample the teacher's input noise ``scale * clamp(std * N(0, 1), -clip, clip)`` (SSL4MIS; docs/architecture.md
    §3).

    Args:
        like: tensor whose shape, dtype and device the noise takes.
        std: noise standard deviation, 0.1 in the reference code.
        clip: clamp bound, 0.2 in the reference code.
        generator: optional generator for reproducible noise.
        scale: the image's spread the noise is relative to (a number, or a tensor broadcastable to ``like``, e.g.
            one standard deviation per batch item); 1 is the reference's absolute noise.

    Returns:
        The noise tensor.
    """
    noise = torch.randn(like.shape, dtype=like.dtype, device=like.device, generator=generator)
    return torch.clamp(noise * std, -clip, clip) * scale


def image_std(images: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-item intensity standard deviation ``(B, 1, 1, ...)`` of a batch, floored at ``eps``."""
    return images.detach().flatten(1).std(dim=1).clamp_min(eps).view(-1, *([1] * (images.dim() - 1)))


class MeanTeacherMethod(SSLMethod):
    """``L = L_sup(s(x_l), y_l) + w(t) * mean((softmax(s(x_u)) - softmax(T(x_u + n)))^2)``.

    Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017, Sec. 2-3; setup of Yu et al.,
    UA-MT, MICCAI 2019 / SSL4MIS ``train_mean_teacher_3D.py`` (docs/architecture.md §3): the student sees the
    labelled and unlabelled images in one forward pass (shared BatchNorm statistics, as in the reference), the teacher
    ``T`` (``engine.state.teacher``, an :class:`~semiseg.handlers.EMATeacher`) sees the unlabelled images plus
    :func:`teacher_noise` without gradient, and ``w(t)`` is ``engine.state.consistency_weight``
    (:class:`~semiseg.handlers.ConsistencyRampUp`, ``0.1 * sigmoid_rampup(iter // 150, 40)``: UA-MT's LA code, 40
    steps of 150 over its 6000 iterations; SSL4MIS's 3D scripts take 200 steps of 150 over 30000, the same curve).

    Subclasses change one step: :meth:`sample_noise`, :meth:`teacher_forward` or :meth:`consistency`
    (UA-MT overrides the last two).

    Args:
        supervised_loss: see :class:`SSLMethod`.
        noise_std: teacher noise std (0.1).
        noise_clip: teacher noise clamp (0.2).
        noise_scale: what the noise is relative to. ``"image_std"`` (default): each unlabelled crop's own intensity
            standard deviation, so ``0.1`` means 0.1 image standard deviations whatever the intensity scaling, which
            is what the reference's absolute 0.1 is on its z-scored LA volumes; ``"absolute"``: intensity units, as
            the reference code literally writes it (on the bundles' [0, 1] percentile-scaled images that is about
            0.4 standard deviations, four times the reference's relative noise).
        student_view: optional strong view of the unlabelled batch for the student
            (:class:`semiseg.data.views.StrongView`; FixMatch, Sohn et al. 2020): the teacher keeps the weak view
            (the crop plus its noise), the student sees an appearance-changed copy. ``None`` (default) is the paper's
            method.

    Raises:
        ValueError: on an unknown ``noise_scale`` or a negative ``noise_std`` / ``noise_clip``.
    """

    required_state = (SSLKeys.TEACHER, SSLKeys.CONSISTENCY_WEIGHT)

    def __init__(
        self,
        supervised_loss: torch.nn.Module | None = None,
        noise_std: float = 0.1,
        noise_clip: float = 0.2,
        noise_scale: str = "image_std",
        student_view: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(supervised_loss)
        if noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {NOISE_SCALES}, got {noise_scale!r}.")
        if noise_std < 0 or noise_clip < 0:
            raise ValueError(f"noise_std and noise_clip must be >= 0, got {noise_std!r} and {noise_clip!r}.")
        self.noise_std = noise_std
        self.noise_clip = noise_clip
        self.noise_scale = noise_scale
        self.student_view = student_view

    def sample_noise(self, unlabelled: torch.Tensor) -> torch.Tensor:
        """The teacher's input noise for this iteration (the one place MT draws randomness)."""
        scale = image_std(unlabelled) if self.noise_scale == "image_std" else 1.0
        return teacher_noise(unlabelled, self.noise_std, self.noise_clip, scale=scale)

    @torch.no_grad()
    def teacher_forward(self, engine: Engine, unlabelled: torch.Tensor) -> torch.Tensor:
        """Teacher logits on the noisy unlabelled batch, without gradient."""
        teacher = self.state(engine, SSLKeys.TEACHER)
        return teacher(unlabelled + self.sample_noise(unlabelled))

    def consistency(
        self, engine: Engine, student_logits: torch.Tensor, teacher_logits: torch.Tensor, unlabelled: torch.Tensor
    ) -> torch.Tensor:
        """The unsupervised term: softmax MSE between student and teacher."""
        return softmax_mse(student_logits, teacher_logits)

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        assert unlabelled is not None  # checked in __call__
        student_u = unlabelled if self.student_view is None else self.student_view(unlabelled)
        logits_l, logits_u = self.student_forward(engine.network, images, student_u)
        supervised = self.supervised_loss(logits_l, labels)
        teacher_logits = self.teacher_forward(engine, unlabelled)
        unsupervised = self.consistency(engine, logits_u, teacher_logits, unlabelled)
        return self.weighted_loss(engine, logits_l, supervised, unsupervised)
