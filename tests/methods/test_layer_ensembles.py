"""Layer Ensembles losses (Kushibar et al., MICCAI 2022, Sec. 2.1; docs/architecture.md §3), hand-computed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from monai.losses import DiceCELoss

from semiseg.keys import SSLKeys
from semiseg.losses import PresentClassDiceLoss, ssl4mis_dice_ce
from semiseg.methods import LayerEnsemblesMeanTeacherMethod, LayerEnsemblesMethod
from semiseg.methods.layer_ensembles import head_loss, layer_ensemble_loss


def _ce() -> DiceCELoss:
    return DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0, lambda_ce=1.0)


class _Heads(torch.nn.Module):
    """Returns fixed per-head logits, broadcast over the batch and space (with a parameter, for gradients)."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [z.view(1, -1, 1, 1, 1).expand(x.shape[0], -1, *x.shape[2:]) for z in self.logits]


def test_sum_of_head_losses_hand_computed() -> None:
    # label 0 everywhere. head 1 logits (0, 0): CE = -log(1/2) = log 2; head 2 (log 3, 0): CE = -log(3/4) = log(4/3)
    # sum (the reference adds the heads' losses with weight 1): log 2 + log(4/3) = log(8/3)
    net = _Heads([[0.0, 0.0], [math.log(3.0), 0.0]])
    engine = SimpleNamespace(network=net)
    images, labels = torch.zeros(2, 1, 2, 2, 2), torch.zeros(2, 1, 2, 2, 2, dtype=torch.long)
    loss, out = LayerEnsemblesMethod(_ce())(engine, (images, labels), None)
    assert loss.item() == pytest.approx(math.log(8 / 3), rel=1e-5)
    assert out["sup_loss"].item() == pytest.approx(math.log(8 / 3), rel=1e-5)
    assert out["pred"].shape == (2, 2, 2, 2, 2)  # the deepest output
    loss.backward()
    assert net.logits.grad is not None and bool((net.logits.grad != 0).all())  # every head is trained
    assert layer_ensemble_loss(layer_ensemble_loss()) is not None and not LayerEnsemblesMethod.requires_unlabelled


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.sin(torch.arange(2 * 3 * 4 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 4, 2) * 0.7) * 2.0
    labels = torch.arange(2 * 4 * 4 * 2).reshape(2, 1, 4, 4, 2) % 3
    labels[0, :, :2] = 0
    return logits, labels


def test_each_head_is_trained_with_the_references_dice_alone() -> None:
    # pianoza/LayerEnsembles@e5a4a88 methods/commons.py 77-86: segmentation_models_pytorch DiceLoss(mode="multiclass",
    # classes=[0, 1, 2], from_logits=True, smooth=1e-7), run on these inputs in a scratch folder: 0.6630282402038574;
    # with class 2 relabelled 1 (absent from the batch: it adds 0 but still counts in the mean): 0.38658711314201355
    logits, labels = _fixed_batch()
    assert PresentClassDiceLoss()(logits, labels).item() == pytest.approx(0.6630282402038574, abs=1e-6)
    assert PresentClassDiceLoss()(logits, labels.where(labels != 2, 1)).item() == pytest.approx(0.38658711314201355,
                                                                                               abs=1e-6)
    # the method's default: that loss on every head, summed with weight 1 (base_method.py train_epoch 277-281)
    net = _Heads([[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])
    images = torch.zeros(2, 1, 4, 4, 2)
    loss, _ = LayerEnsemblesMethod()(SimpleNamespace(network=net), (images, labels), None)
    expected = sum(PresentClassDiceLoss()(z, labels) for z in net(images))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert isinstance(head_loss("dice"), PresentClassDiceLoss)
    assert head_loss("dice_ce")(logits, labels).item() == pytest.approx(ssl4mis_dice_ce()(logits, labels).item())
    with pytest.raises(ValueError, match="setting head_loss must be one of dice, dice_ce"):
        head_loss("ce")


def test_mean_teacher_variant_consistency_on_the_ensembles_hand_computed() -> None:
    # student heads (0, 0) -> (1/2, 1/2) and (log 3, 0) -> (3/4, 1/4): ensemble (5/8, 3/8);
    # teacher (eval-mode wrapper output, log of its ensemble) (1/2, 1/2):
    # mse = ((5/8 - 1/2)^2 + (3/8 - 1/2)^2) / 2 = (1/64 + 1/64) / 2 = 1/64
    method = LayerEnsemblesMeanTeacherMethod(_ce(), noise_std=0.0)
    student = _Heads([[0.0, 0.0], [math.log(3.0), 0.0]])
    teacher = lambda x: torch.log(torch.full((x.shape[0], 2, *x.shape[2:]), 0.5))  # noqa: E731
    engine = SimpleNamespace(network=student, state=SimpleNamespace(teacher=teacher, consistency_weight=2.0))
    images, labels = torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    loss, out = method(engine, (images, labels), torch.ones(1, 1, 2, 2, 2))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(1 / 64, rel=1e-5)
    assert loss.item() == pytest.approx(math.log(8 / 3) + 2.0 / 64, rel=1e-5)
    # skip_first=1: the student's ensemble is head 2 alone, (3/4, 1/4): mse = (1/16 + 1/16) / 2 = 1/16
    skipping = LayerEnsemblesMeanTeacherMethod(_ce(), skip_first=1, noise_std=0.0)
    _, out = skipping(engine, (images, labels), torch.ones(1, 1, 2, 2, 2))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(1 / 16, rel=1e-5)
    # a train-mode teacher returns its heads: identical to the student's -> no consistency
    engine.state.teacher = student
    _, out = method(engine, (images, labels), torch.ones(1, 1, 2, 2, 2))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(0.0, abs=1e-9)


def test_errors_name_the_problem() -> None:
    engine = SimpleNamespace(network=lambda x: torch.zeros(x.shape[0], 2, *x.shape[2:]))
    batch = (torch.zeros(1, 1, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"one logits tensor per head .* got Tensor"):
        LayerEnsemblesMethod()(engine, batch, None)
    with pytest.raises(ValueError, match="skip_first must be >= 0"):
        LayerEnsemblesMeanTeacherMethod(skip_first=-1)
    with pytest.raises(ValueError, match="needs an unlabelled batch"):
        LayerEnsemblesMeanTeacherMethod()(engine, batch, None)
