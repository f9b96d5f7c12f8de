"""UGPCL: contrastive loss, queues, uncertainty masking, rotations and the method's loss (docs/architecture.md §3;
Wang et al., IJCAI 2022, Sec. 3, reference code taovv/UGPCL)."""

from __future__ import annotations

import math
import os
import tempfile
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

import semiseg.methods.ugpcl as ugpcl_module
from semiseg.keys import SSLKeys
from semiseg.losses.contrastive import (
    class_keys,
    enqueue,
    gather_from_ranks,
    pixel_contrastive_loss,
    queue_contrast_set,
    sample_anchors,
)
from semiseg.methods import UGPCLMethod
from semiseg.methods.ugpcl import CONTRAST_WEIGHT, UNCERTAINTY_THRESHOLD, certain_pseudo_labels, rotate_batch
from semiseg.networks import UGPCLNet
from tests.helpers import states_equal

SMALL_NET = {"features": (4, 4, 8, 8, 16, 4), "tf_dim": 6, "tf_num_heads": (1, 2), "embed_dim": 8}


# --- contrastive loss -------------------------------------------------------------------------------------------------

def test_contrastive_loss_hand_computed() -> None:
    """The contrastive loss with tau = 0.1, tau_b = 0.07 on two anchors and three queue entries (2-d unit vectors)."""
    anchors = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    anchor_labels = torch.tensor([1, 2])
    contrast = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    contrast_labels = torch.tensor([1, 2, 1])
    # anchor 1 (class 1): dots 0.6, 0.8, 1.0 -> logits 6, 8, 10; positives q1, q3, negative q2 (logit 8)
    lp_11 = 6 - math.log(math.exp(6) + math.exp(8))
    lp_13 = 10 - math.log(math.exp(10) + math.exp(8))
    mean_1 = (lp_11 + lp_13) / (2 + 1e-5)
    # anchor 2 (class 2): dots 0, 1, 0.8 -> logits 0, 10, 8; positive q2, negatives q1, q3
    mean_2 = (10 - math.log(math.exp(10) + math.exp(0) + math.exp(8))) / (1 + 1e-5)
    expected = -(0.1 / 0.07) * (mean_1 + mean_2) / 2
    loss = pixel_contrastive_loss(anchors, anchor_labels, contrast, contrast_labels, 0.1, 0.07)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # views: (A, V, D) with V = 1 is the same; two views of one class average over both anchors
    assert pixel_contrastive_loss(anchors.unsqueeze(1), anchor_labels, contrast, contrast_labels).item() == \
        pytest.approx(expected, rel=1e-5)
    two_views = pixel_contrastive_loss(anchors.view(1, 2, 2), torch.tensor([1]), contrast, contrast_labels)
    # anchor 2 as class 1: logits 0, 10, 8; positives q1, q3, negative q2 (logit 10)
    mean_2_as_1 = ((0 - math.log(1 + math.exp(10))) + (8 - math.log(math.exp(8) + math.exp(10)))) / (2 + 1e-5)
    assert two_views.item() == pytest.approx(-(0.1 / 0.07) * (mean_1 + mean_2_as_1) / 2, rel=1e-5)


def test_contrastive_loss_has_gradient_and_rejects_bad_input() -> None:
    anchors = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    contrast, labels = queue_contrast_set(torch.nn.functional.normalize(torch.randn(3, 5, 8), dim=2))
    pixel_contrastive_loss(anchors, torch.tensor([0, 1, 2, 1]), contrast, labels).backward()
    assert anchors.grad is not None and anchors.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="contrast must be"):
        pixel_contrastive_loss(anchors, torch.tensor([0, 1, 2, 1]), contrast[:, :4], labels)
    with pytest.raises(ValueError, match="temperatures"):
        pixel_contrastive_loss(anchors, torch.tensor([0, 1, 2, 1]), contrast, labels, temperature=0)


def test_queue_contrast_set_labels_rows_by_class() -> None:
    queue = torch.arange(2 * 3 * 1, dtype=torch.float).view(2, 3, 1)
    feats, labels = queue_contrast_set(queue)
    assert feats.squeeze(1).tolist() == [0, 1, 2, 3, 4, 5] and labels.tolist() == [0, 0, 0, 1, 1, 1]


# --- queues -------------------------------------------------------------------------------------------------------

def test_enqueue_wraps_around_and_normalises() -> None:
    queue = torch.zeros(2, 4, 2)
    ptr = torch.tensor([0, 3])
    keys = torch.tensor([[3.0, 4.0], [0.0, 2.0], [5.0, 0.0]])  # unit: (0.6, 0.8), (0, 1), (1, 0)
    enqueue(queue, ptr, 1, keys)  # slots 3, 0, 1 (wrap), pointer 3 + 3 = 6 = 2 mod 4
    assert queue[1].tolist() == [[0.0, 1.0], [1.0, 0.0], [0.0, 0.0], [pytest.approx(0.6), pytest.approx(0.8)]]
    assert ptr.tolist() == [0, 2] and not queue[0].any()
    five = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 4.0], [6.0, 8.0]])
    enqueue(queue, ptr, 1, five)  # more than 4: the last 4 stay, at slots 3, 0, 1, 2; pointer (2 + 5) % 4 = 3
    assert queue[1].tolist() == [[0.0, 1.0], [0.0, 1.0], [pytest.approx(0.6), pytest.approx(0.8)], [1.0, 0.0]]
    assert ptr.tolist() == [0, 3]
    enqueue(queue, ptr, 1, torch.zeros(0, 2))
    assert ptr.tolist() == [0, 3]
    with pytest.raises(ValueError, match="outside"):
        enqueue(queue, ptr, 2, keys)


def test_class_keys_segment_means_and_voxels() -> None:
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])  # (1, 5, 2)
    labels = torch.tensor([[1, 1, 2, -1, 0]])
    scores = torch.tensor([[0.3, 0.1, 0.5, 0.2, 0.9]])
    segment, voxel = class_keys(feats, labels, num_classes=3, pixel_update_freq=1, scores=scores)
    assert segment[0].shape == (0, 2) and voxel[0].shape == (0, 2)  # background never enqueued
    assert segment[1].tolist() == [[0.5, 0.5]] and segment[2].tolist() == [[1.0, 1.0]]  # -1 ignored
    assert voxel[1].tolist() == [[0.0, 1.0]]  # the class-1 voxel with the lowest score (0.1)
    assert voxel[2].tolist() == [[1.0, 1.0]]
    _, voxel = class_keys(feats, labels, num_classes=3, pixel_update_freq=10, scores=scores)
    assert voxel[1].shape == (2, 2)  # min(count, pixel_update_freq)


def test_anchor_sampling_half_hard_half_easy() -> None:
    feats = torch.arange(6 * 2, dtype=torch.float).view(1, 6, 2)
    labels = torch.tensor([[1, 1, 1, 1, 0, -1]])
    preds = torch.tensor([[0, 1, 1, 1, 0, 0]])  # class 1: voxel 0 hard, voxels 1-3 easy
    scores = torch.tensor([[0.5, 0.9, 0.1, 0.4, 0.2, 0.3]])
    # class 0 has 1 voxel (not > max_views 2), class 1 has 4: one pair, n_view = min(1024 // 1, 2) = 2, 1 hard + 1 easy
    anchors, classes = sample_anchors(feats, labels, preds, 3, max_samples=1024, max_views=2, scores=scores)
    assert classes.tolist() == [1]
    assert anchors.tolist() == [[feats[0, 0].tolist(), feats[0, 2].tolist()]]  # hard 0, easy with lowest score: 2
    # no hard voxel: both views easy
    anchors, _ = sample_anchors(feats, labels, torch.ones_like(preds), 3, max_views=2, scores=scores)
    assert anchors.tolist() == [[feats[0, 2].tolist(), feats[0, 3].tolist()]]
    # max_samples splits the budget: two pairs with max_samples 2 -> one view each
    labels2 = torch.tensor([[1, 1, 2, 2, 2, 0]])
    anchors, classes = sample_anchors(feats, labels2, preds, 3, max_samples=2, max_views=1, scores=scores)
    assert anchors.shape == (2, 1, 2) and classes.tolist() == [1, 2]
    assert sample_anchors(feats, torch.full_like(labels, -1), preds, 3) is None


# --- uncertainty and rotation ---------------------------------------------------------------------------------------

def test_uncertainty_masking_removes_exactly_the_voxels_above_the_threshold() -> None:
    # three voxels, two decoders; mean predictions (0.9, 0.05, 0.05), (0.5, 0.5, 0), (1/3, 1/3, 1/3)
    cnn = torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.4, 0.0], [0.2, 0.4, 0.4]]).T.reshape(1, 3, 3, 1, 1)
    tf = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.6, 0.0], [2 / 3 - 0.2, 2 / 3 - 0.4, 2 / 3 - 0.4]])
    tf = tf.T.reshape(1, 3, 3, 1, 1)
    ent = [-(0.9 * math.log(0.9 + 1e-6) + 2 * 0.05 * math.log(0.05 + 1e-6)),  # 0.394
           -2 * 0.5 * math.log(0.5 + 1e-6),  # ln 2 - 2e-6
           -3 * (1 / 3) * math.log(1 / 3 + 1e-6)]  # ln 3 - 3e-6
    threshold = 0.75 * math.log(2)  # 0.520: the reference's threshold at step 0
    pseudo, uncertain = certain_pseudo_labels(cnn, tf, threshold)
    assert [e > threshold for e in ent] == [False, True, True]
    assert uncertain.flatten().tolist() == [False, True, True]
    assert pseudo.flatten().tolist() == [0, -1, -1]
    pseudo, uncertain = certain_pseudo_labels(cnn, tf, math.log(2))  # ln 2 - 2e-6 is not above ln 2
    assert uncertain.flatten().tolist() == [False, False, True]

    torch.manual_seed(0)
    a, b = torch.softmax(torch.randn(2, 3, 4, 4, 4) * 3, 1), torch.softmax(torch.randn(2, 3, 4, 4, 4) * 3, 1)
    mean = (a + b) / 2
    entropy = -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)
    pseudo, uncertain = certain_pseudo_labels(a, b, 0.6)
    assert torch.equal(uncertain, entropy > 0.6) and 0 < int(uncertain.sum()) < uncertain.numel()
    assert torch.equal(pseudo, torch.where(entropy > 0.6, -1, mean.argmax(1, keepdim=True)))


def test_rotation_labels_match_the_applied_rotation_and_labels_stay_aligned() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 1, 8, 8, 6)
    labels = (images > 0.5).long()
    turns = torch.tensor([0, 1, 2, 3])
    rotated, rotated_labels = rotate_batch(images, labels, turns)
    for i in range(4):
        found = [k for k in range(4) if torch.equal(torch.rot90(images[i], k, dims=(1, 2)), rotated[i])]
        assert found == [int(turns[i])]  # the class label is the quarter turns applied
    assert torch.equal(rotated_labels, (rotated > 0.5).long())  # label rotated with its image


def test_rotation_is_about_the_axial_axis_with_jitter() -> None:
    # a blob whose content varies along the slice axis only in the centre: a rotation about that axis keeps the
    # centre column; the label (nearest) stays aligned with the image (bilinear)
    image = torch.zeros(1, 1, 16, 16, 8)
    image[:, :, 5:11, 5:11, 2:6] = 1.0
    label = image.long()
    rotated, rotated_label = rotate_batch(image, label, torch.tensor([1]), torch.tensor([15.0]))
    assert torch.equal(rotated[0, 0, 8, 8], image[0, 0, 8, 8])  # the axis voxel column is unchanged
    assert rotated_label[0, 0, ..., 0].sum() == 0 and rotated_label[0, 0, ..., 7].sum() == 0  # no slice mixing
    agree = ((rotated > 0.5).long() == rotated_label).float().mean()
    assert agree > 0.97
    with pytest.raises(ValueError, match="H == W"):
        rotate_batch(torch.zeros(1, 1, 8, 6, 4), None, torch.tensor([1]))


# --- the method -----------------------------------------------------------------------------------------------------

def _engine(net: torch.nn.Module, contrast_weight: float = 0.0, threshold: float = 0.52) -> SimpleNamespace:
    state = SimpleNamespace(**{SSLKeys.CONSISTENCY_WEIGHT.value: 0.05, CONTRAST_WEIGHT: contrast_weight,
                               UNCERTAINTY_THRESHOLD: threshold})
    return SimpleNamespace(network=net, networks={"network": net}, state=state)


def _batch() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    images = torch.rand(2, 1, 32, 32, 32)
    labels = torch.zeros(2, 1, 32, 32, 32, dtype=torch.long)
    labels[:, :, 4:20, 4:20, 4:20] = 1
    labels[:, :, 20:30, 20:30, 8:24] = 2
    return (images, labels), torch.rand(2, 1, 32, 32, 32)


def test_loss_is_the_sum_of_its_weighted_terms_and_contrast_starts_with_its_weight() -> None:
    torch.manual_seed(0)
    net = UGPCLNet(**SMALL_NET).train()
    method = UGPCLMethod(num_classes=3, embed_dim=8, memory_size=6, rotation_jitter=0.0)
    queue_before = method.segment_queue.clone()
    labelled, unlabelled = _batch()
    loss, out = method(_engine(net), labelled, unlabelled)
    assert out["contrast_loss"] == 0 and torch.equal(method.segment_queue, queue_before)  # before the start step
    expected = out[SSLKeys.SUPERVISED_LOSS.value] + 0.05 * out[SSLKeys.UNSUPERVISED_LOSS.value] + \
        0.1 * out["cls_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    loss, out = method(_engine(net, contrast_weight=0.1, threshold=10.0), labelled, unlabelled)
    assert out["contrast_loss"] > 0 and out["uncertain_fraction"] == 0  # no voxel above 10 nats
    expected = out[SSLKeys.SUPERVISED_LOSS.value] + 0.05 * out[SSLKeys.UNSUPERVISED_LOSS.value] + \
        0.1 * out["cls_loss"] + 0.1 * out["contrast_loss"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the labelled crops hold classes 1 and 2: at least one mean embedding each per labelled image was enqueued
    assert method.segment_queue_ptr[1] >= 2 and method.segment_queue_ptr[2] >= 2 and method.segment_queue_ptr[0] == 0
    loss.backward()
    assert net.embed_head[1].weight.grad.abs().sum() > 0  # the contrastive term trains the projection head


class _FixedDecoders(torch.nn.Module):
    """UGPCLNet's training outputs with fixed logits per item, constant over space (rotations leave them alone)."""

    def __init__(self, seg: list[list[float]], seg_tf: list[list[float]]) -> None:
        super().__init__()
        self.seg, self.seg_tf = torch.nn.Parameter(torch.tensor(seg)), torch.nn.Parameter(torch.tensor(seg_tf))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[2:]
        return {"seg": self.seg.view(*self.seg.shape, 1, 1, 1).expand(-1, -1, *size),
                "seg_tf": self.seg_tf.view(*self.seg_tf.shape, 1, 1, 1).expand(-1, -1, *size),
                "embed": torch.zeros(x.shape[0], 4, *[s // 4 for s in size]), "cls": torch.zeros(x.shape[0], 4)}


def test_transformer_weight_and_unlabelled_only_consistency_hand_computed() -> None:
    # one labelled crop (label 1 on all N = 64 voxels), then one unlabelled crop; two classes.
    # CNN decoder: logits (0, 0) on both -> p = (1/2, 1/2); transformer decoder: (ln 3, 0) -> (3/4, 1/4) on the labelled
    # crop, (ln 7, 0) -> (7/8, 1/8) on the unlabelled one.
    # L_sup = 0.5 (w_1 D_1) / 2 + 0.5 CE with the background's Dice weight 0 (taovv/UGPCL class_weight [0, 1]):
    #   CNN: D_1 = 1 - (2 N/2 + 1e-5) / (N/4 + N + 1e-5), CE = ln 2; transformer: D_1 = 1 - (2 N/4 + 1e-5) /
    #   (N/16 + N + 1e-5), CE = ln 4; supervised = L_cnn + 0.4 L_tf (the reference's tf_decoder_weight)
    # consistency on the unlabelled crop only: ((1/2 - 7/8)^2 + (1/2 - 1/8)^2) / 2 = 9/64 (with the labelled crop too it
    # would be (9/64 + 1/16) / 2 = 13/128); rotation CE of zero logits over 4 classes: ln 4
    n = 64
    l_cnn = 0.5 * (1 - (n + 1e-5) / (1.25 * n + 1e-5)) / 2 + 0.5 * math.log(2)
    l_tf = 0.5 * (1 - (n / 2 + 1e-5) / (17 * n / 16 + 1e-5)) / 2 + 0.5 * math.log(4)
    net = _FixedDecoders([[0.0, 0.0], [0.0, 0.0]], [[math.log(3), 0.0], [math.log(7), 0.0]])
    method = UGPCLMethod(num_classes=2, embed_dim=4, memory_size=4, rotation_jitter=0.0)
    engine = _engine(net)
    engine.state.consistency_weight = 0.5
    labelled = (torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 4, dtype=torch.long))
    loss, out = method(engine, labelled, torch.zeros(1, 1, 4, 4, 4))
    assert out[SSLKeys.SUPERVISED_LOSS.value].item() == pytest.approx(l_cnn + 0.4 * l_tf, rel=1e-6)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(9 / 64, rel=1e-6)
    assert loss.item() == pytest.approx(l_cnn + 0.4 * l_tf + 0.5 * 9 / 64 + 0.1 * math.log(4), rel=1e-6)


def test_missing_state_names_its_handler() -> None:
    method = UGPCLMethod()
    engine = SimpleNamespace(state=SimpleNamespace(consistency_weight=0.1))
    with pytest.raises(RuntimeError, match="contrast_weight.*RampScheduler"):
        method._check_state(engine)
    with pytest.raises(ValueError, match="contrast_queue"):
        UGPCLMethod(contrast_queue="both_queues")
    with pytest.raises(ValueError, match="memory_size"):
        UGPCLMethod(memory_size=0)
    with pytest.raises(TypeError, match="UGPCLNet"):
        method(_engine(torch.nn.Conv3d(1, 3, 1)), *_batch())


def test_queue_state_round_trip_restores_queues_and_generator() -> None:
    method = UGPCLMethod(num_classes=3, embed_dim=4, memory_size=5, queue_seed=1)
    embed = torch.nn.functional.normalize(torch.randn(2, 4, 4, 4, 4), dim=1)
    pseudo = torch.randint(-1, 3, (2, 1, 4, 4, 4))
    method.update_queues(embed, pseudo)
    saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in method.state_dict().items()}
    fresh = UGPCLMethod(num_classes=3, embed_dim=4, memory_size=5, queue_seed=2)
    assert not states_equal(fresh.state_dict(), saved)
    fresh.load_state_dict(saved)
    assert states_equal(fresh.state_dict(), saved)
    method.update_queues(embed, pseudo)
    fresh.update_queues(embed, pseudo)  # the same voxels drawn after the restore
    assert torch.equal(method.pixel_queue, fresh.pixel_queue)


def test_queue_update_enqueues_the_keys_of_every_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mocked world of two ranks: the other rank's keys (class 2 only) reach this rank's queues."""
    other = {"embed": torch.nn.functional.normalize(torch.randn(1, 4, 2, 2, 2), dim=1),
             "labels": torch.full((1, 1, 2, 2, 2), 2)}

    def two_ranks(tensor: torch.Tensor) -> torch.Tensor:
        return torch.cat([tensor, other["embed"] if tensor.is_floating_point() else other["labels"]])

    monkeypatch.setattr(ugpcl_module, "gather_from_ranks", two_ranks)
    method = UGPCLMethod(num_classes=3, embed_dim=4, memory_size=20)
    method.update_queues(torch.nn.functional.normalize(torch.randn(1, 4, 2, 2, 2), dim=1),
                         torch.ones(1, 1, 2, 2, 2, dtype=torch.long))
    assert method.segment_queue_ptr.tolist() == [0, 1, 1]  # one mean per image and class, from both ranks
    assert torch.allclose(method.segment_queue[2, 0], torch.nn.functional.normalize(other["embed"].mean((2, 3, 4)))[0],
                          atol=1e-6)
    assert method.pixel_queue_ptr.tolist() == [0, 8, 8]  # min(8 voxels, 10) per image and class


def _gather_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gathered = gather_from_ranks(torch.full((1, 2), float(rank)))
        torch.save(gathered, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_gather_from_ranks_with_two_gloo_processes() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gather_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        for rank in range(2):
            assert torch.load(os.path.join(tmp, f"{rank}.pt")).tolist() == [[0.0, 0.0], [1.0, 1.0]]
    single = torch.ones(2, 3)
    assert gather_from_ranks(single) is single  # not distributed: the tensor itself
