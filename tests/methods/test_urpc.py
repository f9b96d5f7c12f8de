"""URPC: the uncertainty-rectified pyramid loss and the method (Luo et al., MICCAI 2021; SSL4MIS
``train_uncertainty_rectified_pyramid_consistency_3D.py``; docs/architecture.md §3)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from semiseg.keys import SSLKeys
from semiseg.losses import ssl4mis_dice_ce, uncertainty_rectified_pyramid_loss
from semiseg.methods import URPCMethod


class _Pyramid(nn.Module):
    """Four 1x1x1 heads on a shared 3x3x3 convolution: a list of logits in training mode, the first in eval mode
    (the interface of :class:`semiseg.networks.DeepSupervisionUNet`, which the bundle smoke test trains)."""

    def __init__(self, num_outputs: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleList(nn.Conv3d(4, 3, 1) for _ in range(num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        features = self.body(x)
        outputs = [head(features) for head in self.heads]
        return outputs if self.training else outputs[0]


def test_rectified_loss_on_a_hand_built_pyramid() -> None:
    """Two scales, two classes, one item with two voxels (logits (B=1, C=2, 2)).

    voxel 1: scale 1 logits (0, 0) -> p1 = (1/2, 1/2); scale 2 logits (ln 3, 0) -> p2 = (3/4, 1/4);
             mean P = (5/8, 3/8).
    voxel 2: both scales (0, 0) -> p = P = (1/2, 1/2): no disagreement, D = 0, weight exp(0) = 1.
    """
    scale1 = torch.tensor([[[0.0, 0.0], [0.0, 0.0]]])  # (B, C, voxels)
    scale2 = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])
    # D_s = sum_c P log(P / p_s) at voxel 1 (the reference's KLDivLoss(log p_s, P) summed over classes)
    d1 = 5 / 8 * math.log((5 / 8) / (1 / 2)) + 3 / 8 * math.log((3 / 8) / (1 / 2))  # 0.0315839
    d2 = 5 / 8 * math.log((5 / 8) / (3 / 4)) + 3 / 8 * math.log((3 / 8) / (1 / 4))  # 0.0380984
    # (P - p_s)^2 at voxel 1 is (1/8)^2 for both classes at both scales; 0 at voxel 2
    sq = (1 / 8) ** 2
    losses = []
    for d in (d1, d2):
        # mean over B x C x voxels = 4 entries of (P - p)^2 exp(-D): two entries sq * exp(-d), two zeros
        rectified = (2 * sq * math.exp(-d) / 4) / ((math.exp(-d) + 1) / 2 + 1e-8)
        losses.append(rectified + (d + 0) / 2)  # + mean over the 2 voxels of D
    expected = sum(losses) / 2
    assert d1 == pytest.approx(0.0315839, abs=1e-7) and d2 == pytest.approx(0.0380984, abs=1e-7)
    assert expected == pytest.approx(0.0250970, rel=1e-5)  # (0.0234811 + 0.0267129) / 2
    got = uncertainty_rectified_pyramid_loss([scale1, scale2])
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_rectified_loss_is_zero_when_every_scale_predicts_the_same() -> None:
    logits = torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert uncertainty_rectified_pyramid_loss([logits.clone() for _ in range(4)]).item() == pytest.approx(0, abs=1e-7)


def test_rectified_loss_is_positive_with_gradient_to_every_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = [torch.randn(1, 2, 3, 3, 3, generator=gen, requires_grad=True) for _ in range(3)]
    loss = uncertainty_rectified_pyramid_loss(logits)
    loss.backward()
    assert loss.item() > 0
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits)


def test_rectified_loss_rejects_bad_pyramids() -> None:
    with pytest.raises(ValueError, match="at least 2 logits"):
        uncertainty_rectified_pyramid_loss([torch.zeros(1, 2, 4)])
    with pytest.raises(ValueError, match="single tensor"):
        uncertainty_rectified_pyramid_loss(torch.zeros(2, 1, 2, 4))
    with pytest.raises(ValueError, match=r"one shape .* \[\(1, 2, 4\), \(1, 2, 2\)\]"):
        uncertainty_rectified_pyramid_loss([torch.zeros(1, 2, 4), torch.zeros(1, 2, 2)])


def _engine(network: nn.Module, weight: float = 0.5) -> SimpleNamespace:
    return SimpleNamespace(network=network, state=SimpleNamespace(consistency_weight=weight))


def _batch() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 1, 6, 6, 6, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=gen)
    return (images, labels), torch.randn(2, 1, 6, 6, 6, generator=gen)


def test_method_losses_from_one_pass_over_labelled_and_unlabelled() -> None:
    torch.manual_seed(0)
    net = _Pyramid().train()
    (images, labels), unlabelled = _batch()
    loss, out = URPCMethod()(_engine(net, weight=0.25), (images, labels), unlabelled)

    # the same numbers from the network's outputs, written out: the reference's (sum CE_s + sum Dice_s) / 8
    with torch.no_grad():  # deterministic: a second training-mode pass gives the same outputs
        outputs = net(torch.cat([images, unlabelled]))
    assert len(outputs) == 4
    dice_ce = ssl4mis_dice_ce()
    sup = sum(dice_ce(o[:2], labels) for o in outputs) / 4  # mean of 0.5 (CE_s + Dice_s)
    unsup = uncertainty_rectified_pyramid_loss([o[2:] for o in outputs])
    assert out[SSLKeys.SUPERVISED_LOSS.value].item() == pytest.approx(sup.item(), rel=1e-5)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(unsup.item(), rel=1e-5)
    assert loss.item() == pytest.approx(sup.item() + 0.25 * unsup.item(), rel=1e-5)
    assert torch.allclose(out["pred"], outputs[0][:2], atol=1e-6)  # the main output on the labelled batch
    assert out[SSLKeys.CONSISTENCY_WEIGHT.value].item() == 0.25


def test_unsupervised_gradient_reaches_every_scale() -> None:
    torch.manual_seed(0)
    net = _Pyramid().train()
    (images, labels), unlabelled = _batch()
    loss, _ = URPCMethod(supervised_loss=lambda logits, target: logits.sum() * 0.0)(
        _engine(net, weight=1.0), (images, labels), unlabelled
    )
    loss.backward()  # the consistency term alone
    assert loss.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())  # every scale's head


def test_a_network_without_pyramid_outputs_is_refused_by_name() -> None:
    net = nn.Conv3d(1, 3, 1)
    (images, labels), unlabelled = _batch()
    with pytest.raises(TypeError, match="DeepSupervisionUNet .* got a Tensor"):
        URPCMethod()(_engine(net), (images, labels), unlabelled)


def test_missing_ramp_names_its_handler() -> None:
    engine = SimpleNamespace(state=SimpleNamespace(consistency_weight=None))
    with pytest.raises(RuntimeError, match="ConsistencyRampUp"):
        URPCMethod()._check_state(engine)


def test_gradient_flows_through_the_mean_prediction() -> None:
    """Nothing is detached, as in the reference: the autograd gradient of the loss is its true derivative, the part
    through the mean prediction ``P`` (in ``D_s`` and ``(P - p_s)^2``) included. Checked against finite differences
    in float64; a detached ``P`` loses that part and fails."""
    gen = torch.Generator().manual_seed(3)
    logits = [torch.randn(2, 3, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(lambda *scales: uncertainty_rectified_pyramid_loss(list(scales)), logits)
