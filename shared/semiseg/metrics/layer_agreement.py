"""Layer agreement and AULA, the segmentation uncertainty of Layer Ensembles.

Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for Segmentation",
MICCAI 2022: a network with segmentation heads at several depths gives one prediction per head; the Dice
between the masks of consecutive heads, plotted against the head index, is the *layer agreement* curve, and the
area under it (AULA) is high when the heads agree (confident) and low when they do not (uncertain).

The masks are binarised predictions, as the paper and the authors' README define the agreement ("the Dice
Coefficient" between the layers' segmentations). The reference code (``pianoza/LayerEnsembles@e5a4a88``
``methods/evaluation_utils.py`` lines 108-118) passes the heads' softmax probabilities to a Dice that casts its inputs
to bool (``metrics.py`` ``as_logical``), so every voxel with a non-zero probability counts as foreground and the
agreement is 1 almost everywhere; where code and paper disagree, this module follows the paper. The reference keeps
one curve per foreground class (``aula_<c>``) and correlates each with that class's Dice (:func:`aula_per_class`);
:func:`aula` is one value per case for ranking, the curve averaged over the classes present.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["area_under_agreement", "aula", "aula_per_class", "layer_agreement"]


def _foreground_masks(probs: torch.Tensor) -> torch.Tensor:
    """``(B, K, N)`` boolean masks of the K foreground classes of ``(B, C, *spatial)`` probabilities."""
    batch, num_channels = probs.shape[:2]
    if num_channels == 1:  # one sigmoid channel: foreground where p > 0.5
        return (probs > 0.5).reshape(batch, 1, -1)
    labels = probs.argmax(dim=1).reshape(batch, 1, -1)
    classes = torch.arange(1, num_channels, device=probs.device).view(1, -1, 1)
    return labels == classes


def _class_dice(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice of ``(B, K, N)`` masks per item and class ``(B, K)`` (1 where both are empty), and where either is not."""
    intersection = (a & b).sum(dim=-1).float()
    total = a.sum(dim=-1).float() + b.sum(dim=-1).float()
    present = total > 0
    return torch.where(present, 2.0 * intersection / total.clamp_min(1.0), torch.ones_like(total)), present


def _mask_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-item Dice of ``(B, K, N)`` masks: mean over classes present in ``a`` or ``b``; 1 if none is."""
    dice, present = _class_dice(a, b)
    num_present = present.sum(dim=1)
    mean = (dice * present).sum(dim=1) / num_present.clamp_min(1).float()
    return torch.where(num_present > 0, mean, torch.ones_like(mean))


def layer_agreement(head_probs: Sequence[torch.Tensor], per_class: bool = False) -> torch.Tensor:
    """The layer-agreement curve: Dice between the masks of each pair of adjacent heads.

    Each head's probabilities (or logits, for ``C > 1``) are binarised: ``C > 1`` channels by argmax over the
    channel dimension, one mask per foreground class ``1..C-1``; a single channel by ``p > 0.5``. The agreement
    of heads ``i`` and ``i + 1`` is the Dice of their masks, averaged over the foreground classes present in at
    least one of the two masks.

    Edge cases: both masks empty for every foreground class gives agreement 1 (the heads agree there is nothing);
    a class empty in both masks is left out of the class mean rather than counted as 1, so absent classes do not
    inflate the agreement; one mask empty and the other not gives 0 for that class.

    With ``per_class`` one curve per foreground class instead (the reference's ``aula_<c>``): the Dice of that
    class's masks, 1 where both are empty (the heads agree the class is absent).

    Args:
        head_probs: ``L >= 2`` tensors of equal shape ``(B, C, *spatial)``, ordered by head depth (as in the paper's
            curve).
        per_class: one curve per foreground class.

    Returns:
        ``(B, L - 1)`` float agreements in [0, 1], one curve per batch item; ``(B, K, L - 1)`` with ``per_class``,
        ``K = C - 1`` foreground classes (1 for a single sigmoid channel).

    Raises:
        ValueError: if fewer than two heads are given, or the shapes differ or lack a spatial dimension.
    """
    if len(head_probs) < 2:
        raise ValueError(f"layer agreement needs at least 2 heads, got {len(head_probs)}.")
    shape = tuple(head_probs[0].shape)
    if len(shape) < 3:
        raise ValueError(f"head probabilities must be (B, C, *spatial), got shape {shape}.")
    for i, probs in enumerate(head_probs):
        if tuple(probs.shape) != shape:
            raise ValueError(f"all heads must have shape {shape}, head {i} has {tuple(probs.shape)}.")
    masks = [_foreground_masks(probs) for probs in head_probs]
    if per_class:
        return torch.stack([_class_dice(masks[i], masks[i + 1])[0] for i in range(len(masks) - 1)], dim=-1)
    return torch.stack([_mask_dice(masks[i], masks[i + 1]) for i in range(len(masks) - 1)], dim=1)


def aula(head_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Area under the layer-agreement curve (AULA), per batch item, in [0, 1].

    With agreements ``a_1 .. a_{L-1}`` from :func:`layer_agreement` at unit spacing, the trapezoid rule gives
    ``AULA = sum_{i=1}^{L-2} (a_i + a_{i+1}) / 2``, divided by the ``L - 2`` intervals so that full agreement is 1
    and none is 0 (the division only fixes the scale; the ranking of cases is the paper's). With only two heads the
    curve is one point and AULA is that agreement.

    Edge cases: heads that all predict empty foreground give AULA 1; see :func:`layer_agreement` for the Dice
    conventions.

    Args:
        head_probs: ``L >= 2`` tensors of equal shape ``(B, C, *spatial)``, ordered by head depth.

    Returns:
        ``(B,)`` float AULA; lower means more uncertain.

    Raises:
        ValueError: as :func:`layer_agreement`.
    """
    return area_under_agreement(layer_agreement(head_probs))


def aula_per_class(head_probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """AULA of each foreground class, per batch item: the area under :func:`layer_agreement` with ``per_class``.

    The reference's per-class AULA (``pianoza/LayerEnsembles@e5a4a88`` ``methods/evaluation_utils.py`` lines
    108-118, one ``aula_<c>`` per foreground class, correlated with that class's Dice in ``summarize_results/
    make_summary.py`` lines 125-137), on binarised masks (see the module docstring) and normalised as :func:`aula`
    (the reference reports the negated, unnormalised trapezoid area; the ranking is the same). A class absent from
    every head scores 1.

    Args:
        head_probs: ``L >= 2`` tensors of equal shape ``(B, C, *spatial)``, ordered by head depth.

    Returns:
        ``(B, K)`` float AULA per foreground class, ``K = C - 1`` (1 for a single sigmoid channel).

    Raises:
        ValueError: as :func:`layer_agreement`.
    """
    curves = layer_agreement(head_probs, per_class=True)
    batch, classes = curves.shape[:2]
    return area_under_agreement(curves.reshape(batch * classes, -1)).reshape(batch, classes)


def area_under_agreement(curve: torch.Tensor) -> torch.Tensor:
    """The normalised trapezoid area under layer-agreement curves (the last step of :func:`aula`).

    Args:
        curve: ``(B, L - 1)`` agreements from :func:`layer_agreement`, ``L >= 2``.

    Returns:
        ``(B,)``: ``sum_i (a_i + a_{i+1}) / 2 / (L - 2)``, or ``a_1`` when the curve is one point.

    Raises:
        ValueError: if ``curve`` is not ``(B, n)`` with ``n >= 1``.
    """
    if curve.ndim != 2 or curve.shape[1] < 1:
        raise ValueError(f"layer-agreement curves must be (B, n >= 1), got shape {tuple(curve.shape)}.")
    intervals = curve.shape[1] - 1
    if intervals == 0:
        return curve[:, 0]
    return torch.trapezoid(curve, dim=1) / intervals
