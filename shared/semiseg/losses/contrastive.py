"""Voxel (pixel) contrastive loss against per-class memory queues, as in UGPCL.

Wang et al., "Uncertainty-Guided Pixel Contrastive Learning for Semi-Supervised Medical Image Segmentation", IJCAI
2022, Sec. 3 (pixel contrastive loss) and reference code ``taovv/UGPCL`` ``codes/losses/pixel_contras_loss.py`` and
``codes/trainers/ugpcl_trainer.py`` (``_dequeue_and_enqueue``), after Wang et al., "Exploring Cross-Image Pixel
Contrast for Semantic Segmentation", ICCV 2021. docs/architecture.md §3.

The pieces, each testable alone:

* :func:`sample_anchors`: per image and class, up to ``n_view`` anchor voxels, half "hard" (the label is the class,
  the prediction is not) and half "easy" where both groups allow;
* :func:`pixel_contrastive_loss`: the loss of the anchors against a labelled contrast set (the queues);
* :func:`enqueue`: a ring-buffer write into one class's queue;
* :func:`class_keys`: what one batch adds to the queues (a mean embedding per image and class for the segment queue,
  up to ``pixel_update_freq`` random voxels per image and class for the voxel queue);
* :func:`gather_from_ranks`: the keys of every rank under ``torch.distributed``, so that all ranks enqueue the same.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "sample_anchors",
    "pixel_contrastive_loss",
    "queue_contrast_set",
    "enqueue",
    "class_keys",
    "gather_from_ranks",
]


def _check_flat(feats: torch.Tensor, *label_maps: torch.Tensor) -> None:
    if feats.ndim != 3:
        raise ValueError(f"feats must be (B, N, D), got shape {tuple(feats.shape)}.")
    for labels in label_maps:
        if labels.shape != feats.shape[:2]:
            raise ValueError(f"label maps must be (B, N) = {tuple(feats.shape[:2])}, got {tuple(labels.shape)}.")


def _random_members(members: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``(B, C, k)`` of the members of each ``(b, c)`` group (``members`` ``(B, C, N)``) in the random order
    of ``scores`` ``(B, N)`` in [0, 1), members first (the rest, past the group's size, are non-members)."""
    keyed = torch.where(members, scores.unsqueeze(1), torch.full_like(scores, 2.0).unsqueeze(1))
    return keyed.argsort(dim=-1)[..., :k]


def sample_anchors(
    feats: torch.Tensor,
    labels: torch.Tensor,
    preds: torch.Tensor,
    num_classes: int,
    max_samples: int = 1024,
    max_views: int = 1,
    scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Anchor voxels per image and class (reference ``PixelContrastLoss._anchor_sampling``).

    A class of an image takes part when more than ``max_views`` of its voxels carry it (label -1, an uncertain or
    ignored voxel, never does). With ``A`` such (image, class) pairs, each gets ``n_view = min(max_samples // A,
    max_views)`` anchors (at least 1): ``n_view // 2`` hard voxels (label = class, prediction != class) and the rest
    easy (both = class) where each group has at least ``n_view / 2``, else all of the smaller group and the rest from
    the larger, chosen at random.

    Args:
        feats: voxel embeddings ``(B, N, D)``.
        labels: (pseudo-)labels ``(B, N)``, integers in ``[-1, num_classes)``, -1 = not an anchor.
        preds: predicted classes ``(B, N)``.
        num_classes: classes.
        max_samples: total anchor budget (1024).
        max_views: anchors per (image, class) at most (the reference trainer's 1).
        scores: random keys ``(B, N)`` in [0, 1) that order the voxels (default ``torch.rand``, the global generator).

    Returns:
        ``(anchors (A, n_view, D), anchor_labels (A,))`` ordered by image then class, or None when no class of any
        image has more than ``max_views`` voxels.

    Raises:
        ValueError: on shapes that do not match or ``max_samples`` / ``max_views`` < 1.
    """
    _check_flat(feats, labels, preds)
    if max_samples < 1 or max_views < 1:
        raise ValueError(f"max_samples and max_views must be >= 1, got {max_samples} and {max_views}.")
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
    members = labels.unsqueeze(1) == classes  # (B, C, N)
    counts = members.sum(-1)
    present = counts > max_views
    total = int(present.sum())
    if total == 0:
        return None
    n_view = max(1, min(max_samples // total, max_views))
    hit = preds.unsqueeze(1) == classes
    hard, easy = members & ~hit, members & hit
    num_hard, num_easy = hard.sum(-1), easy.sum(-1)
    half = n_view / 2
    hard_keep = torch.where(
        (num_hard >= half) & (num_easy >= half),
        torch.full_like(num_hard, n_view // 2),
        torch.where(num_hard >= half, n_view - num_easy, num_hard),
    )
    if scores is None:
        scores = torch.rand(labels.shape, device=labels.device)
    hard_idx = _random_members(hard, scores, n_view)
    easy_idx = _random_members(easy, scores, n_view)
    view = torch.arange(n_view, device=labels.device).view(1, 1, -1)
    keep = hard_keep.unsqueeze(-1)
    idx = torch.where(view < keep, hard_idx, easy_idx.gather(-1, (view - keep).clamp(min=0)))
    b, c = present.nonzero(as_tuple=True)
    anchors = feats[b.unsqueeze(1), idx[b, c]]
    return anchors, c


def pixel_contrastive_loss(
    anchors: torch.Tensor,
    anchor_labels: torch.Tensor,
    contrast: torch.Tensor,
    contrast_labels: torch.Tensor,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
) -> torch.Tensor:
    """``-(tau / tau_b) mean_i [ sum_{p in P(i)} log( e^{a_i.p/tau} / (e^{a_i.p/tau} + sum_{n in N(i)} e^{a_i.n/tau}) )
    / (|P(i)| + 1e-5) ]``.

    UGPCL's pixel contrastive loss (Wang et al., IJCAI 2022, Sec. 3) as its reference code computes it: for every
    anchor ``a_i`` the positives ``P(i)`` are the contrast entries of its class, the negatives ``N(i)`` all others;
    each positive is contrasted with all negatives; the mean over positives (``+1e-5`` in the count) and anchors is
    scaled by ``tau / tau_b``.
    Anchors and contrast entries are L2-normalised embeddings. Unlike the reference, no contrast column is dropped as
    "self" (its mask removes entry ``i`` of the queue for anchor ``i``, a leftover of the anchor-vs-anchor form: a
    queue holds no anchor).

    Args:
        anchors: ``(A, V, D)`` (views per anchor class) or ``(A, D)``.
        anchor_labels: ``(A,)`` classes of the anchors.
        contrast: ``(K, D)`` contrast entries (the memory queues).
        contrast_labels: ``(K,)`` their classes.
        temperature: ``tau`` (0.1).
        base_temperature: ``tau_b`` (0.07).

    Returns:
        The scalar loss (float32).

    Raises:
        ValueError: on mismatched shapes, empty inputs or temperatures <= 0.
    """
    if anchors.ndim == 2:
        anchors = anchors.unsqueeze(1)
    if anchors.ndim != 3 or anchor_labels.shape != anchors.shape[:1]:
        raise ValueError(
            f"anchors must be (A, V, D) with anchor_labels (A,), got {tuple(anchors.shape)} and "
            f"{tuple(anchor_labels.shape)}."
        )
    if contrast.ndim != 2 or contrast_labels.shape != contrast.shape[:1] or contrast.shape[1] != anchors.shape[2]:
        raise ValueError(
            f"contrast must be (K, {anchors.shape[2]}) with contrast_labels (K,), got {tuple(contrast.shape)} and "
            f"{tuple(contrast_labels.shape)}."
        )
    if anchors.numel() == 0 or contrast.numel() == 0:
        raise ValueError("pixel_contrastive_loss needs at least one anchor and one contrast entry.")
    if temperature <= 0 or base_temperature <= 0:
        raise ValueError(f"temperatures must be > 0, got {temperature} and {base_temperature}.")
    views = anchors.shape[1]
    feats = anchors.reshape(-1, anchors.shape[2]).float()
    labels = anchor_labels.repeat_interleave(views)
    logits = feats @ contrast.float().T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    positive = (labels.view(-1, 1) == contrast_labels.view(1, -1)).float()
    exp_logits = logits.exp()
    negatives = (exp_logits * (1.0 - positive)).sum(dim=1, keepdim=True)
    log_prob = logits - torch.log(exp_logits + negatives)
    mean_log_prob_pos = (positive * log_prob).sum(dim=1) / (positive.sum(dim=1) + 1e-5)
    return -(temperature / base_temperature) * mean_log_prob_pos.mean()


def queue_contrast_set(queue: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class queues ``(C, M, D)`` as a contrast set: ``(C * M, D)`` entries and their ``(C * M,)`` classes."""
    num_classes, size, dim = queue.shape
    labels = torch.arange(num_classes, device=queue.device).repeat_interleave(size)
    return queue.reshape(num_classes * size, dim), labels


def enqueue(queue: torch.Tensor, ptr: torch.Tensor, cls: int, keys: torch.Tensor) -> None:
    """Write ``keys`` (L2-normalised) into class ``cls``'s ring buffer at its pointer, wrapping around; in place.

    The oldest entries are overwritten first; with more keys than the queue holds, the last ``M`` stay. The pointer
    moves by the number of keys (mod ``M``).

    Args:
        queue: ``(C, M, D)`` queues.
        ptr: ``(C,)`` integer pointers (the next slot of each class).
        cls: the class.
        keys: ``(n, D)`` keys.

    Raises:
        ValueError: on a class out of range or keys of another dimension.
    """
    num_classes, size, dim = queue.shape
    if not 0 <= cls < num_classes:
        raise ValueError(f"class {cls} is outside the queue's {num_classes} classes.")
    if keys.ndim != 2 or keys.shape[1] != dim:
        raise ValueError(f"keys must be (n, {dim}), got {tuple(keys.shape)}.")
    count = keys.shape[0]
    if count == 0:
        return
    skip = max(0, count - size)
    start = int(ptr[cls])
    slots = (start + skip + torch.arange(count - skip)) % size
    with torch.no_grad():
        queue[cls, slots.to(queue.device)] = F.normalize(keys[skip:].detach().to(queue.dtype), p=2, dim=1)
        ptr[cls] = (start + count) % size


def class_keys(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    pixel_update_freq: int = 10,
    scores: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What one batch enqueues per class (reference ``UGPCLTrainer._dequeue_and_enqueue``), background excluded.

    For every image and every class ``c >= 1`` present in it (label -1 never counts): the mean embedding of its
    voxels (segment queue) and ``min(count, pixel_update_freq)`` of its voxels chosen at random (voxel queue), images
    in batch order.

    Args:
        feats: ``(B, N, D)`` embeddings (detached).
        labels: ``(B, N)`` (pseudo-)labels, -1 = ignore.
        num_classes: classes.
        pixel_update_freq: voxels per image and class for the voxel queue (10).
        scores: random keys ``(B, N)`` in [0, 1) ordering the voxels (default ``torch.rand``).

    Returns:
        ``(segment_keys, voxel_keys)``: one ``(n_c, D)`` tensor per class (index 0, the background, is empty).
    """
    _check_flat(feats, labels)
    if pixel_update_freq < 1:
        raise ValueError(f"pixel_update_freq must be >= 1, got {pixel_update_freq}.")
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1)
    members = labels.unsqueeze(1) == classes  # (B, C, N)
    counts = members.sum(-1)
    means = torch.bmm(members.to(feats.dtype), feats) / counts.clamp(min=1).unsqueeze(-1).to(feats.dtype)
    if scores is None:
        scores = torch.rand(labels.shape, device=labels.device)
    k = min(pixel_update_freq, labels.shape[1])
    idx = _random_members(members, scores, k)  # (B, C, k)
    chosen = torch.arange(k, device=labels.device).view(1, 1, -1) < counts.unsqueeze(-1)
    present = (counts > 0).cpu()
    empty = feats.new_zeros((0, feats.shape[2]))
    segment, voxel = [empty], [empty]
    for c in range(1, num_classes):
        rows = present[:, c].to(labels.device)
        segment.append(means[rows, c])
        picked = feats.gather(1, idx[:, c].unsqueeze(-1).expand(-1, -1, feats.shape[2]))  # (B, k, D)
        voxel.append(picked[chosen[:, c] & rows.unsqueeze(1)])
    return segment, voxel


def gather_from_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` of every rank concatenated along dim 0 (rank order) under ``torch.distributed``; else ``tensor``.

    Every rank must pass a tensor of the same shape (the same batch size per rank, as ``DistributedSampler`` gives).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
