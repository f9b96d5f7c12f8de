"""Entropy minimisation (Grandvalet & Bengio, NeurIPS 2004; Vu et al., ADVENT, CVPR 2019; SSL4MIS
train_entropy_minimization_3D.py): mean over voxels of ``-sum_c p log(p + 1e-6) / log C`` (docs/architecture.md §3)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from semiseg.keys import SSLKeys
from semiseg.losses import entropy_loss
from semiseg.methods import EntropyMinimisationMethod

A = math.log(3) / 2  # logits (A, -A): softmax = 1 / (1 + e^{-2A}) = 1 / (1 + 1/3) = (0.75, 0.25)

# the 2-voxel example, C = 2, natural log, eps 1e-6:
# voxel 0, p = (0.5, 0.5):   -(0.5 ln 0.500001 + 0.5 ln 0.500001) / ln 2 = 0.693145181 / 0.693147181 = 0.999997115
# voxel 1, p = (0.75, 0.25): -(0.75 ln 0.750001 + 0.25 ln 0.250001) / ln 2
#                          = (0.75 * 0.287680739 + 0.25 * 1.386290361) / 0.693147181 = 0.562333145 / 0.693147181
#                          = 0.811275239
# mean = (0.999997115 + 0.811275239) / 2 = 0.905636177
TWO_VOXEL_ENTROPY = 0.905636177


class _Scale(nn.Module):
    """``logits = (w x, -w x)``: the unlabelled voxels' values pick their softmax exactly (w = 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.w * x, -self.w * x], dim=1)


def _data() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    images = torch.tensor([2.0, -2.0]).reshape(1, 1, 1, 1, 2)
    labels = torch.tensor([0, 1]).reshape(1, 1, 1, 1, 2)
    unlabelled = torch.tensor([0.0, A]).reshape(1, 1, 1, 1, 2)  # softmax (0.5, 0.5) and (0.75, 0.25)
    return (images, labels), unlabelled


def _engine(network: nn.Module, weight: float | None = 0.1) -> SimpleNamespace:
    state = SimpleNamespace() if weight is None else SimpleNamespace(consistency_weight=weight)
    return SimpleNamespace(network=network, state=state)


def test_entropy_loss_on_two_voxels() -> None:
    probs = torch.tensor([[0.5, 0.75], [0.5, 0.25]]).reshape(1, 2, 1, 1, 2)
    assert entropy_loss(probs).item() == pytest.approx(TWO_VOXEL_ENTROPY, abs=1e-7)


def test_loss_is_supervised_plus_weighted_entropy_of_the_unlabelled_predictions() -> None:
    """``include_labelled=False``: the regulariser of Grandvalet & Bengio, on the unlabelled predictions only."""
    network = _Scale()
    labelled, unlabelled = _data()
    loss, out = EntropyMinimisationMethod(include_labelled=False)(_engine(network, weight=0.25), labelled, unlabelled)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(TWO_VOXEL_ENTROPY, abs=1e-6)
    supervised = EntropyMinimisationMethod().supervised_loss(network(labelled[0]), labelled[1])
    assert out[SSLKeys.SUPERVISED_LOSS.value].item() == pytest.approx(supervised.item(), rel=1e-6)
    assert loss.item() == pytest.approx(supervised.item() + 0.25 * TWO_VOXEL_ENTROPY, abs=1e-6)
    assert out[SSLKeys.CONSISTENCY_WEIGHT.value].item() == 0.25
    assert out["pred"].shape == (1, 2, 1, 1, 2)


@pytest.mark.parametrize("include_labelled", [None, True, "true", "True"])
def test_default_takes_the_whole_batch_as_the_reference(include_labelled: bool | str | None) -> None:
    """SSL4MIS applies entropy_loss to the whole batch (train_entropy_minimization_3D.py: entropy_loss(outputs_soft)),
    the default: 2 labelled + 2 unlabelled voxels here."""
    labelled, unlabelled = _data()
    kwargs = {} if include_labelled is None else {"include_labelled": include_labelled}
    _, out = EntropyMinimisationMethod(**kwargs)(_engine(_Scale()), labelled, unlabelled)
    # labelled voxels: logits (+-2, -+2): p = 1 / (1 + e^-4) = (0.982013790, 0.017986210) (both voxels alike)
    # -(0.982013790 ln 0.982014790 + 0.017986210 ln 0.017987210) / ln 2
    #   = (0.982013790 * 0.018148910 + 0.017986210 * 4.018094331) / 0.693147181 = 0.090092768 / 0.693147181
    #   = 0.129976389
    # mean over the 4 voxels = (2 * 0.905636177 + 2 * 0.129976389) / 4 = 0.517806283
    expected = 0.517806283
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("include_labelled", [False, "false", "0"])
def test_include_labelled_false_from_the_command_line_is_false(include_labelled: bool | str) -> None:
    """``--method#include_labelled false`` reaches the method as the string "false", which must not read as true."""
    labelled, unlabelled = _data()
    _, out = EntropyMinimisationMethod(include_labelled=include_labelled)(_engine(_Scale()), labelled, unlabelled)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(TWO_VOXEL_ENTROPY, abs=1e-6)


def test_include_labelled_refuses_a_non_boolean() -> None:
    with pytest.raises(ValueError, match="include_labelled"):
        EntropyMinimisationMethod(include_labelled="sometimes")


def test_gradient_of_the_entropy_sharpens_the_prediction() -> None:
    """d/dw of the entropy is negative: growing the logits lowers the entropy, so a step sharpens."""
    network = _Scale()
    labelled, unlabelled = _data()
    method = EntropyMinimisationMethod()
    logits_u = method.student_forward(network, labelled[0], unlabelled)[1]
    unsup = entropy_loss(torch.softmax(logits_u, 1))
    unsup.backward()
    assert network.w.grad is not None and network.w.grad.item() < 0


def test_missing_weight_state_fails_at_start_naming_the_handler() -> None:
    engine = Engine(lambda e, b: None)
    EntropyMinimisationMethod().attach(engine)
    with pytest.raises(RuntimeError, match=r"engine\.state\.consistency_weight.*ConsistencyRampUp"):
        engine.run([0], max_epochs=1)


def test_needs_an_unlabelled_batch() -> None:
    labelled, _ = _data()
    with pytest.raises(ValueError, match="unlabelled"):
        EntropyMinimisationMethod()(_engine(_Scale()), labelled, None)
