"""Consistency between two predictions of the same input (Mean Teacher, UA-MT, UGPCL, ...)."""

from __future__ import annotations

import torch

__all__ = ["softmax_mse"]


def softmax_mse(student_logits: torch.Tensor, teacher_logits: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared difference of the softmax probabilities, ``(softmax(s) - softmax(t))^2``.

    Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017, Sec. 2 (consistency cost J);
    SSL4MIS ``train_mean_teacher_3D.py``: ``torch.mean((outputs_soft[labeled_bs:] - ema_output_soft) ** 2)``
    (mean over batch, classes and voxels). docs/architecture.md §3.

    Gradients flow into both arguments; detach (or compute under ``torch.no_grad``) the target when it is a teacher.

    Args:
        student_logits: logits ``(B, C, *spatial)``.
        teacher_logits: logits of the same shape.
        reduction: ``"mean"`` (the reference) or ``"none"`` (per-element map, e.g. for UA-MT's masked mean).

    Returns:
        A scalar, or a tensor shaped like the inputs for ``reduction="none"``.

    Raises:
        ValueError: on a shape mismatch or an unknown reduction.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"softmax_mse needs logits of equal shape, got {tuple(student_logits.shape)} and "
            f"{tuple(teacher_logits.shape)}."
        )
    diff = (torch.softmax(student_logits, dim=1) - torch.softmax(teacher_logits, dim=1)) ** 2
    if reduction == "mean":
        return diff.mean()
    if reduction == "none":
        return diff
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}.")
