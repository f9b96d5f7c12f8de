"""URPC's uncertainty-rectified pyramid consistency between the outputs of a deep-supervision network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["uncertainty_rectified_pyramid_loss"]


def uncertainty_rectified_pyramid_loss(logits_list: Sequence[torch.Tensor], eps: float = 1e-8) -> torch.Tensor:
    """Uncertainty-rectified consistency between each pyramid output and the pyramid's mean prediction.

    Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma Segmentation via
    Uncertainty Rectified Pyramid Consistency", MICCAI 2021, Sec. 2 (pyramid consistency with the uncertainty
    rectifying module), exactly as SSL4MIS ``train_uncertainty_rectified_pyramid_consistency_3D.py`` computes it
    (docs/architecture.md §3). With
    ``p_s = softmax(logits_s)`` for the ``S`` scales and ``P = mean_s p_s``:

    * uncertainty per voxel ``D_s = sum_c P log(P / p_s)`` (the reference's ``nn.KLDivLoss(reduction='none')(log
      p_s, P)`` summed over classes: ``KL(P || p_s)``), and its weight ``w_s = exp(-D_s)``;
    * ``L_s = mean((P - p_s)^2 w_s) / (mean(w_s) + eps) + mean(D_s)``, the first mean over batch, classes and
      voxels, the other two over batch and voxels;
    * the loss is ``mean_s L_s``.

    Nothing is detached, as in the reference: the gradient reaches every scale through ``p_s`` and through ``P``.

    Args:
        logits_list: ``S >= 2`` logits of equal shape ``(B, C, *spatial)``, e.g. a
            :class:`~semiseg.networks.DeepSupervisionUNet`'s training outputs on the unlabelled batch.
        eps: the reference's ``1e-8`` in the normalisation.

    Returns:
        The scalar loss (0 when all scales predict the same).

    Raises:
        ValueError: on fewer than two outputs, a tensor with fewer than 2 dimensions or outputs of unequal shapes.
    """
    if isinstance(logits_list, torch.Tensor) or len(logits_list) < 2:
        got = "a single tensor" if isinstance(logits_list, torch.Tensor) else f"{len(logits_list)} output(s)"
        raise ValueError(
            f"uncertainty_rectified_pyramid_loss needs a list of at least 2 logits (one per pyramid scale), got {got}."
        )
    shapes = [tuple(logits.shape) for logits in logits_list]
    if len(set(shapes)) != 1 or len(shapes[0]) < 2:
        raise ValueError(
            f"uncertainty_rectified_pyramid_loss needs logits of one shape (B, C, *spatial) at every scale (upsample "
            f"them to the input size first), got shapes {shapes}."
        )
    log_probs = [F.log_softmax(logits, dim=1) for logits in logits_list]
    probs = [log_p.exp() for log_p in log_probs]
    mean_prob = torch.stack(probs).mean(dim=0)
    losses = []
    for log_p, p in zip(log_probs, probs):
        variance = F.kl_div(log_p, mean_prob, reduction="none").sum(dim=1, keepdim=True)
        weight = torch.exp(-variance)
        rectified = torch.mean((mean_prob - p) ** 2 * weight) / (torch.mean(weight) + eps)
        losses.append(rectified + torch.mean(variance))
    return torch.stack(losses).mean()
