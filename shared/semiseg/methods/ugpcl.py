"""UGPCL (Wang et al., IJCAI 2022): uncertainty-guided pixel contrastive learning, in 3D."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from monai.transforms import Rotate

from semiseg.keys import SSLKeys
from semiseg.losses import ClassWeightedDiceCELoss, softmax_mse
from semiseg.losses.contrastive import (
    class_keys,
    enqueue,
    gather_from_ranks,
    pixel_contrastive_loss,
    queue_contrast_set,
    sample_anchors,
)
from semiseg.losses.entropy import entropy_map
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = [
    "UGPCLMethod",
    "rotate_batch",
    "certain_pseudo_labels",
    "CONTRAST_WEIGHT",
    "UNCERTAINTY_THRESHOLD",
    "CONTRAST_QUEUES",
]

CONTRAST_WEIGHT = "contrast_weight"  # engine.state: the contrastive weight, 0 before the start step (RampScheduler)
UNCERTAINTY_THRESHOLD = "uncertainty_threshold"  # engine.state: entropy threshold in nats (RampScheduler)
CONTRAST_QUEUES = ("segment", "pixel", "both")
ROTATION_DIMS = (2, 3)  # the axial plane of (B, C, H, W, D): rotations about the last (axial, z) axis


def rotate_batch(
    images: torch.Tensor,
    labels: torch.Tensor | None,
    turns: torch.Tensor,
    jitter_degrees: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rotate each item about the axial axis by ``turns[i] * 90`` degrees, then by ``jitter_degrees[i]``.

    UGPCL's equivariance task (Wang et al., IJCAI 2022, Sec. 3; reference ``UGPCLTrainer.train_step``:
    ``torch.rot90(image, k, [1, 2])`` then ``TF.rotate`` by U(-20, 20) degrees, image and label alike): in 3D the
    rotation is in the axial plane (dims 2, 3 of ``(B, C, H, W, D)``), about the slice axis, so the label rotates
    with the image and stays aligned. The jitter uses MONAI's ``Rotate`` (bilinear for images, nearest for labels,
    zero padding as ``TF.rotate``).

    Args:
        images: ``(B, C, H, W, D)`` with ``H == W`` (a quarter turn swaps them).
        labels: ``(B, 1, H, W, D)`` or None.
        turns: ``(B,)`` integers in 0..3.
        jitter_degrees: ``(B,)`` extra angles in degrees, or None for none.

    Returns:
        The rotated images and labels (None if none were given).

    Raises:
        ValueError: on a non-square axial plane, a label of another size, or ``turns`` of the wrong length.
    """
    if images.ndim != 5 or images.shape[2] != images.shape[3]:
        raise ValueError(
            f"UGPCL's rotation needs (B, C, H, W, D) crops with H == W (set roi_size to e.g. [48, 48, 48]), got "
            f"{tuple(images.shape)}."
        )
    if labels is not None and labels.shape[2:] != images.shape[2:]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match images {tuple(images.shape)}.")
    if turns.shape != (images.shape[0],):
        raise ValueError(f"turns must be ({images.shape[0]},), got {tuple(turns.shape)}.")
    out_images, out_labels = [], []
    for i, k in enumerate(turns.tolist()):
        image = torch.rot90(images[i], int(k), dims=(1, 2))
        label = None if labels is None else torch.rot90(labels[i], int(k), dims=(1, 2))
        if jitter_degrees is not None and float(jitter_degrees[i]) != 0.0:
            angle = (0.0, 0.0, math.radians(float(jitter_degrees[i])))
            image = _plain(Rotate(angle, keep_size=True, mode="bilinear", padding_mode="zeros")(image))
            if label is not None:
                label = _plain(Rotate(angle, keep_size=True, mode="nearest", padding_mode="zeros")(label))
        out_images.append(image.to(images.dtype))
        if label is not None:
            out_labels.append(label.to(labels.dtype))  # type: ignore[union-attr]
    return torch.stack(out_images), (torch.stack(out_labels) if labels is not None else None)


def _plain(x: Any) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else x


@torch.no_grad()
def certain_pseudo_labels(
    probs_cnn: torch.Tensor, probs_tf: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-labels of the decoders' mean prediction with uncertain voxels set to -1.

    UGPCL Sec. 3 (uncertainty estimation; reference ``UGPCLTrainer.train_step``):
    ``p = (softmax(cnn) + softmax(tf)) / 2``,
    uncertainty ``u = -sum_c p_c log(p_c + 1e-6)`` (natural log), pseudo-label ``argmax p`` where ``u <= threshold``,
    -1 (left out of the contrastive loss and the queues) where ``u > threshold``.

    Args:
        probs_cnn: ``(B, C, *spatial)`` softmax of the CNN decoder.
        probs_tf: the same for the transformer decoder.
        threshold: in nats (the reference: ``(0.75 + 0.25 sigmoid_rampup(step, max_iter)) ln 2``).

    Returns:
        ``(pseudo (B, 1, *spatial) long, uncertain (B, 1, *spatial) bool)``.
    """
    mean = (probs_cnn + probs_tf) / 2
    uncertain = entropy_map(mean.float(), eps=1e-6, dim=1, normalise=False) > threshold
    pseudo = mean.argmax(dim=1, keepdim=True)
    return pseudo.masked_fill(uncertain, -1), uncertain


class UGPCLMethod(SSLMethod):
    """``L = L_sup(cnn) + w_tf L_sup(tf) + w_c(t) mse(softmax(cnn_u), softmax(tf_u)) + w_cls CE(rot) + w_pc(t) L_pc``.

    Wang et al., "Uncertainty-Guided Pixel Contrastive Learning for Semi-Supervised Medical Image Segmentation",
    IJCAI 2022, Sec. 3 (the overall objective), as its reference code ``taovv/UGPCL`` (``codes/trainers/
    ugpcl_trainer.py``) runs it with the paper's comparison config (``configs/comparison_acdc_224_136/
    ugpcl_unet_r50.yaml`` on ``configs/_trainers/ugpcl.yaml``; docs/architecture.md §3). One iteration:

    1. every labelled and unlabelled crop is rotated about the axial axis by a random ``k * 90`` degrees plus a
       ``U(-rotation_jitter, rotation_jitter)`` jitter, labels with their images (:func:`rotate_batch`);
    2. one forward pass of the :class:`~semiseg.networks.UGPCLNet` over both batches gives ``seg`` (CNN decoder),
       ``seg_tf`` (transformer decoder), ``embed`` (256-d voxel embeddings) and ``cls`` (rotation logits);
    3. supervised ``L_sup(seg_l, y) + tf_weight L_sup(seg_tf_l, y)`` on the labelled crops only, ``L_sup`` the
       reference's ``0.5 Dice + 0.5 CE`` with class weights ``[0, 1, ..., 1]`` on the Dice
       (:class:`~semiseg.losses.ClassWeightedDiceCELoss`); consistency ``mean((softmax(seg_u) - softmax(seg_tf_u))^2)``
       on the unlabelled crops only, weighted by ``engine.state.consistency_weight`` (:class:`~semiseg.handlers.
       ConsistencyRampUp`; the comparison config: ``0.01 sigmoid_rampup(step // 100, 100)`` over 10000 steps);
       rotation ``cls_weight CE(cls, k)`` on all crops;
    4. when ``engine.state.contrast_weight`` > 0 (a :class:`~semiseg.handlers.RampScheduler` that is 0 up to step
       1000 of 10000 in the reference): pseudo-labels of the decoders' mean prediction with voxels above
       ``engine.state.uncertainty_threshold`` removed (:func:`certain_pseudo_labels`), the labels on the labelled
       crops, are resized (nearest) to the embeddings; anchors (:func:`~semiseg.losses.contrastive.sample_anchors`,
       hard/easy by the CNN decoder's prediction) are contrasted with the memory queues
       (:func:`~semiseg.losses.contrastive.pixel_contrastive_loss`), then the batch's keys (gathered from all ranks
       under ``torch.distributed``) are enqueued.

    The queues are the method's state (``_state_attrs``, in the checkpoint as ``"method": "@method"``): per class, a
    segment queue of mean embeddings (one per image and class) and a voxel queue (``pixel_update_freq`` voxels per
    image and class), ``memory_size`` entries each, L2-normalised, ring buffers. As in the reference, the background
    is never enqueued (its queue rows stay zero vectors, the reference's padding of the contrast set), the segment
    queues start as random unit vectors and the voxel queues as zeros, and the loss uses the segment queue
    (``contrast_queue``). The voxel queue draws its voxels from the method's own generator (seeded by ``queue_seed``,
    checkpointed), so that all ranks, which enqueue the same gathered keys, keep equal queues.

    Args:
        supervised_loss: the loss of one decoder's labelled logits; default the reference's ``0.5 Dice + 0.5 CE``
            without the background in the Dice (``ClassWeightedDiceCELoss([0, 1, ..., 1])``).
        num_classes: classes (queues per class).
        tf_weight: weight of the transformer decoder's supervised loss (0.4, the reference's ``tf_decoder_weight``).
        cls_weight: weight of the rotation classification loss (0.1).
        temperature: contrastive temperature (0.07, ``configs/_trainers/ugpcl.yaml``; the trainer's own default is
            0.1).
        base_temperature: contrastive base temperature (0.07).
        max_samples: anchor budget per iteration (1024).
        max_views: anchors per image and class at most (1, the reference trainer's value).
        memory_size: queue length per class (500, the comparison config; ``_trainers/ugpcl.yaml`` 2000, the
            trainer's own default 100).
        pixel_update_freq: voxels per image and class added to the voxel queue at each update (10).
        embed_dim: embedding dimension (256).
        contrast_queue: ``"segment"`` (reference), ``"pixel"`` or ``"both"``.
        rotation_jitter: half-range in degrees of the random extra rotation (20; 0 = quarter turns only).
        queue_seed: seed of the voxel-queue generator.

    Raises:
        ValueError: on an unknown ``contrast_queue`` or out-of-range settings (named).
    """

    required_state = (SSLKeys.CONSISTENCY_WEIGHT, CONTRAST_WEIGHT, UNCERTAINTY_THRESHOLD)
    _state_attrs = ("segment_queue", "segment_queue_ptr", "pixel_queue", "pixel_queue_ptr", "queue_rng_state")

    def __init__(
        self,
        supervised_loss: torch.nn.Module | None = None,
        num_classes: int = 3,
        tf_weight: float = 0.4,
        cls_weight: float = 0.1,
        temperature: float = 0.07,
        base_temperature: float = 0.07,
        max_samples: int = 1024,
        max_views: int = 1,
        memory_size: int = 500,
        pixel_update_freq: int = 10,
        embed_dim: int = 256,
        contrast_queue: str = "segment",
        rotation_jitter: float = 20.0,
        queue_seed: int = 0,
    ) -> None:
        if supervised_loss is None and int(num_classes) == num_classes and num_classes >= 2:
            supervised_loss = ClassWeightedDiceCELoss([0.0] + [1.0] * (int(num_classes) - 1))
        super().__init__(supervised_loss)
        if contrast_queue not in CONTRAST_QUEUES:
            raise ValueError(f"contrast_queue must be one of {CONTRAST_QUEUES}, got {contrast_queue!r}.")
        for name, value in (("num_classes", num_classes), ("max_samples", max_samples), ("max_views", max_views),
                            ("memory_size", memory_size), ("pixel_update_freq", pixel_update_freq),
                            ("embed_dim", embed_dim)):
            if int(value) != value or value < (2 if name == "num_classes" else 1):
                raise ValueError(f"UGPCLMethod {name} must be an integer >= {2 if name == 'num_classes' else 1}, "
                                 f"got {value!r}.")
        for name, value in (("tf_weight", tf_weight), ("cls_weight", cls_weight), ("rotation_jitter", rotation_jitter)):
            if value < 0:
                raise ValueError(f"UGPCLMethod {name} must be >= 0, got {value!r}.")
        if temperature <= 0 or base_temperature <= 0:
            raise ValueError(f"UGPCLMethod temperatures must be > 0, got {temperature!r} and {base_temperature!r}.")
        self.num_classes, self.tf_weight, self.cls_weight = int(num_classes), float(tf_weight), float(cls_weight)
        self.temperature, self.base_temperature = float(temperature), float(base_temperature)
        self.max_samples, self.max_views = int(max_samples), int(max_views)
        self.pixel_update_freq, self.contrast_queue = int(pixel_update_freq), contrast_queue
        self.rotation_jitter = float(rotation_jitter)
        self._generator = torch.Generator().manual_seed(int(queue_seed))
        segment = F.normalize(torch.randn(num_classes, memory_size, embed_dim, generator=self._generator), dim=2)
        segment[0] = 0.0  # the background is never enqueued: zero rows, as the reference's contrast set has
        self.segment_queue = segment
        self.segment_queue_ptr = torch.zeros(num_classes, dtype=torch.long)
        self.pixel_queue = torch.zeros(num_classes, memory_size, embed_dim)
        self.pixel_queue_ptr = torch.zeros(num_classes, dtype=torch.long)
        self.queue_rng_state = self._generator.get_state()

    def state_dict(self) -> dict[str, Any]:
        """The queues, their pointers and the voxel-queue generator's state (see :class:`SSLMethod`)."""
        self.queue_rng_state = self._generator.get_state()
        return super().state_dict()

    def load_state_dict(self, state_dict: Any) -> None:
        """Restore the queues, pointers and generator (see :class:`SSLMethod`)."""
        super().load_state_dict(state_dict)
        self._generator.set_state(self.queue_rng_state.cpu())

    def contrast_set(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The queues the loss contrasts with, as ``(K, D)`` entries and ``(K,)`` classes, on ``device``."""
        if self.segment_queue.device != device:
            self.segment_queue, self.pixel_queue = self.segment_queue.to(device), self.pixel_queue.to(device)
        queues = {"segment": [self.segment_queue], "pixel": [self.pixel_queue],
                  "both": [self.segment_queue, self.pixel_queue]}[self.contrast_queue]
        return queue_contrast_set(torch.cat(queues, dim=1))

    @torch.no_grad()
    def update_queues(self, embed: torch.Tensor, pseudo: torch.Tensor) -> None:
        """Enqueue this batch's keys (from every rank under ``torch.distributed``).

        Args:
            embed: ``(B, D, *spatial)`` embeddings.
            pseudo: ``(B, 1, *spatial)`` pseudo-labels at the embeddings' size, -1 = uncertain.
        """
        feats = gather_from_ranks(embed.detach().float()).flatten(2).transpose(1, 2)
        labels = gather_from_ranks(pseudo.long()).flatten(1)
        scores = torch.rand(labels.shape, generator=self._generator).to(labels.device)
        segment, voxel = class_keys(feats, labels, self.num_classes, self.pixel_update_freq, scores)
        self.contrast_set(feats.device)  # queues on the embeddings' device
        for c in range(1, self.num_classes):
            enqueue(self.segment_queue, self.segment_queue_ptr, c, segment[c])
            enqueue(self.pixel_queue, self.pixel_queue_ptr, c, voxel[c])

    def contrastive(
        self, engine: Engine, out: dict[str, torch.Tensor], labels: torch.Tensor, n_labelled: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The uncertainty-guided contrastive loss of this batch, then the queue update.

        Returns:
            ``(loss, fraction of uncertain voxels)``.
        """
        probs_cnn, probs_tf = torch.softmax(out["seg"].detach(), 1), torch.softmax(out["seg_tf"].detach(), 1)
        threshold = float(self.state(engine, UNCERTAINTY_THRESHOLD))
        pseudo, uncertain = certain_pseudo_labels(probs_cnn, probs_tf, threshold)
        pseudo[:n_labelled] = labels.long()
        size = out["embed"].shape[2:]
        pseudo_small = F.interpolate(pseudo.float(), size=size, mode="nearest").long()
        preds_small = F.interpolate(probs_cnn.argmax(1, keepdim=True).float(), size=size, mode="nearest").long()
        embed = out["embed"]
        feats = embed.flatten(2).transpose(1, 2)
        sampled = sample_anchors(feats, pseudo_small.flatten(1), preds_small.flatten(1), self.num_classes,
                                 self.max_samples, self.max_views)
        if sampled is None:  # no class with enough certain voxels: nothing to contrast (the reference would fail)
            loss = embed.sum() * 0.0
        else:
            contrast, contrast_labels = self.contrast_set(embed.device)
            loss = pixel_contrastive_loss(*sampled, contrast, contrast_labels, self.temperature, self.base_temperature)
        self.update_queues(embed, pseudo_small)
        return loss, uncertain.float().mean()

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        images, labels = labelled
        assert unlabelled is not None  # checked in __call__
        n_labelled = images.shape[0]
        total = n_labelled + unlabelled.shape[0]
        turns = torch.randint(0, 4, (total,))
        jitter = (torch.rand(total) * 2 - 1) * self.rotation_jitter  # U(-j, j) degrees; zeros are skipped
        images, labels = rotate_batch(images, labels, turns[:n_labelled], jitter[:n_labelled])
        unlabelled, _ = rotate_batch(unlabelled, None, turns[n_labelled:], jitter[n_labelled:])
        out = self.network(engine, "network")(torch.cat([images, unlabelled], dim=0))
        if not isinstance(out, dict) or any(k not in out for k in ("seg", "seg_tf", "embed", "cls")):
            raise TypeError(
                "UGPCLMethod needs a network whose training forward returns {'seg', 'seg_tf', 'embed', 'cls'} "
                "(semiseg.networks.UGPCLNet)."
            )
        seg_l, seg_u = out["seg"][:n_labelled], out["seg"][n_labelled:]
        supervised = self.supervised_loss(seg_l, labels) + self.tf_weight * self.supervised_loss(
            out["seg_tf"][:n_labelled], labels
        )
        consistency = softmax_mse(seg_u, out["seg_tf"][n_labelled:])
        cls_loss = F.cross_entropy(out["cls"].float(), turns.to(out["cls"].device))
        weight = float(self.state(engine, SSLKeys.CONSISTENCY_WEIGHT))
        contrast_weight = float(self.state(engine, CONTRAST_WEIGHT))
        loss = supervised + weight * consistency + self.cls_weight * cls_loss
        contrast = uncertain = torch.zeros((), device=loss.device)
        if contrast_weight > 0:
            contrast, uncertain = self.contrastive(engine, out, labels, n_labelled)
            loss = loss + contrast_weight * contrast
        terms = self.outputs(seg_l, supervised, consistency)
        terms.update({
            SSLKeys.CONSISTENCY_WEIGHT.value: torch.tensor(weight),
            "cls_loss": cls_loss.detach(),
            "contrast_loss": contrast.detach(),
            CONTRAST_WEIGHT: torch.tensor(contrast_weight),
            "uncertain_fraction": uncertain.detach(),
        })
        return loss, terms
