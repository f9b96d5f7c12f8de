"""Uncertainty-masked consistency (UA-MT): the teacher's target counts only where the teacher is certain."""

from __future__ import annotations

import torch

__all__ = ["uncertainty_masked_mse"]


def uncertainty_masked_mse(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    uncertainty: torch.Tensor,
    threshold: float | torch.Tensor,
) -> torch.Tensor:
    """``sum(mask * (softmax(s) - p_t)^2) / (C * sum(mask) + 1e-16)`` with ``mask = uncertainty < threshold``.

    Yu et al., "Uncertainty-aware Self-ensembling Model for Semi-supervised 3D Left Atrium Segmentation", MICCAI
    2019, Sec. 2 (the uncertainty-aware consistency loss: the squared difference restricted to, and averaged over, the
    voxels whose uncertainty is below the threshold ``H``); SSL4MIS
    ``train_uncertainty_aware_mean_teacher_3D.py``, where the normaliser is ``2 * sum(mask) + 1e-16`` for its two
    classes. docs/architecture.md §3.

    The mask has one value per voxel and is counted once per voxel, so the result is the mean squared difference
    over the classes of the certain voxels (0 when no voxel is certain). The sums are taken in float32, so a half
    precision input cannot overflow the voxel count. Gradients flow into ``student_logits`` only when the other
    arguments are detached, as a teacher's are.

    Args:
        student_logits: student logits ``(B, C, *spatial)``.
        teacher_probs: the teacher's class probabilities, the same shape.
        uncertainty: per-voxel uncertainty ``(B, 1, *spatial)`` (UA-MT: the entropy of the mean of the teacher's
            noisy softmax predictions, natural log).
        threshold: voxels with ``uncertainty < threshold`` count (a number or a 0-dim tensor).

    Returns:
        The scalar loss (float32).

    Raises:
        ValueError: if ``teacher_probs`` differs in shape from ``student_logits``, ``uncertainty`` is not
            ``(B, 1, *spatial)`` for them, or ``threshold`` is not a single value.
    """
    if student_logits.dim() < 3:
        raise ValueError(
            f"uncertainty_masked_mse needs student_logits shaped (B, C, *spatial), got {tuple(student_logits.shape)}."
        )
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            f"uncertainty_masked_mse needs teacher_probs shaped like student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_probs.shape)}."
        )
    voxel_shape = (student_logits.shape[0], 1, *student_logits.shape[2:])
    if tuple(uncertainty.shape) != voxel_shape:
        raise ValueError(
            f"uncertainty_masked_mse needs one uncertainty per voxel, shaped {voxel_shape}, got "
            f"{tuple(uncertainty.shape)}."
        )
    if isinstance(threshold, torch.Tensor) and threshold.numel() != 1:
        raise ValueError(f"uncertainty_masked_mse needs a single threshold, got shape {tuple(threshold.shape)}.")
    num_classes = student_logits.shape[1]
    squared = (torch.softmax(student_logits.float(), dim=1) - teacher_probs.float()) ** 2
    mask = (uncertainty < threshold).float()
    return (mask * squared).sum() / (num_classes * mask.sum() + 1e-16)
