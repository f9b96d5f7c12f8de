"""UA-MT (Yu et al., MICCAI 2019; SSL4MIS train_uncertainty_aware_mean_teacher_3D.py; docs/architecture.md §3)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from torch import nn

from semiseg.handlers import EMATeacher, RampScheduler
from semiseg.keys import SSLKeys
from semiseg.losses import softmax_mse
from semiseg.methods import MeanTeacherMethod, UAMTMethod, UncertainTeacherOutput
from tests.bundles.conftest import config
from tests.methods.test_mean_teacher import _batch, _conv_net  # a deterministic 3-class net: no dropout, no BN

T = 3  # noisy uncertainty passes in these tests (8 in the paper)


def _engine(student: nn.Module, teacher: nn.Module, threshold: float | None = 1.0, weight: float = 0.5):
    state = SimpleNamespace(teacher=teacher, consistency_weight=weight)
    if threshold is not None:
        state.uncertainty_threshold = threshold
    return SimpleNamespace(network=student, state=state)


class _FixedNoise(UAMTMethod):
    """UA-MT whose ``sample_noise`` returns a given tensor (and records what it was asked for)."""

    def __init__(self, noise: torch.Tensor, **kwargs) -> None:
        super().__init__(**kwargs)
        self.noise, self.asked = noise, []

    def sample_noise(self, unlabelled: torch.Tensor) -> torch.Tensor:
        self.asked.append(tuple(unlabelled.shape))
        return self.noise


def test_threshold_ramp_of_the_bundle_config() -> None:
    """``r(t) = 0.75 + 0.25 sigmoid_rampup(iter, max_iter)`` from the uamt bundle's RampScheduler, at a budget of
    100 iterations; the threshold is ``r(t) ln C``."""
    parser = ConfigParser()
    parser.read_config(config("uamt", "train.json"))
    handler = parser.get_parsed_content("uncertainty_threshold_handler")
    assert isinstance(handler, RampScheduler) and handler.param_name == SSLKeys.UNCERTAINTY_THRESHOLD.value
    handler.fit(100)
    # iter 0:   0.75 + 0.25 exp(-5 (1 - 0/100)^2)   = 0.75 + 0.25 * 0.006737947 = 0.751684487
    # iter 25:  0.75 + 0.25 exp(-5 (1 - 25/100)^2)  = 0.75 + 0.25 * 0.060054668 = 0.765013667
    # iter 50:  0.75 + 0.25 exp(-5 (1 - 50/100)^2)  = 0.75 + 0.25 * 0.286504797 = 0.821626199
    # iter 100: 0.75 + 0.25 exp(0) = 1.0 (and stays there)
    expected = {0: 0.751684487, 25: 0.765013667, 50: 0.821626199, 100: 1.0, 150: 1.0}
    for iteration, value in expected.items():
        assert handler.value_at_index(iteration) == pytest.approx(value, abs=1e-9), iteration
    # the threshold in nats: r ln C; at iter 50 with C = 2: 0.821626199 * 0.693147181 = 0.569507883
    assert expected[50] * math.log(2) == pytest.approx(0.569507883, abs=1e-9)


def test_threshold_is_the_state_fraction_times_ln_c() -> None:
    """Voxels with entropy just below / above ``r ln C`` are kept / dropped (C = 3, r = 0.5: H = 0.549306144)."""
    method = UAMTMethod()
    h = 0.5 * math.log(3)  # 0.5 * 1.098612289 = 0.549306144
    student = torch.zeros(1, 3, 1, 1, 2)  # softmax 1/3 everywhere
    target_logits = torch.tensor([[10.0, 10.0], [0.0, 0.0], [0.0, 0.0]]).reshape(1, 3, 1, 1, 2)
    uncertainty = torch.tensor([h - 1e-4, h + 1e-4]).reshape(1, 1, 1, 1, 2)
    loss = method.consistency(_engine(student, student, threshold=0.5), student,
                              UncertainTeacherOutput(target_logits, uncertainty), torch.zeros(1, 1, 1, 1, 2))
    # voxel 0 only: p_t = softmax(10, 0, 0) = (e^10, 1, 1) / (e^10 + 2) = (0.999909208, 0.000045396, 0.000045396)
    # sum_c (1/3 - p_t)^2 = 0.666575875^2 + 2 * 0.333287937^2 = 0.444323406 + 0.222161703 = 0.666485109
    # / (C * 1) = 0.666485109 / 3 = 0.222161703
    assert loss.item() == pytest.approx(0.222161703, abs=1e-7)


def test_one_batched_pass_equals_separate_passes_with_the_same_noise() -> None:
    teacher = _conv_net()
    _, unlabelled = _batch()
    batch = unlabelled.shape[0]
    noise = 0.1 * torch.randn((T + 1) * batch, *unlabelled.shape[1:], generator=torch.Generator().manual_seed(2))
    method = _FixedNoise(noise, uncertainty_passes=T)
    out = method.teacher_forward(_engine(teacher, teacher), unlabelled)
    assert method.asked == [((T + 1) * batch, *unlabelled.shape[1:])]  # one draw, one forward, T + 1 copies
    with torch.no_grad():
        passes = [teacher(unlabelled + noise[i * batch:(i + 1) * batch]) for i in range(T + 1)]
    mean = torch.stack([torch.softmax(p, 1) for p in passes[1:]]).mean(0)
    entropy = -(mean * torch.log(mean + 1e-6)).sum(1, keepdim=True)
    assert torch.allclose(out.logits, passes[0], atol=1e-6)
    assert torch.allclose(out.uncertainty, entropy, atol=1e-6)
    assert out.uncertainty.shape == (batch, 1, *unlabelled.shape[2:])
    # entropy of a 3-class mean lies in [0, ln 3]
    assert out.uncertainty.min() >= 0 and out.uncertainty.max() <= math.log(3) + 1e-6


def test_every_copy_gets_its_own_clipped_noise() -> None:
    seen: list[torch.Tensor] = []

    class Recorder(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return torch.cat([x, -x], 1)

    _, unlabelled = _batch()
    torch.manual_seed(0)
    method = UAMTMethod(uncertainty_passes=T, noise_scale="absolute")
    method.teacher_forward(_engine(Recorder(), Recorder()), unlabelled)
    (inputs,) = seen
    noise = (inputs - unlabelled.repeat(T + 1, 1, 1, 1, 1)).reshape(T + 1, *unlabelled.shape)
    assert noise.abs().max() <= 0.2 + 1e-6 and noise.abs().max() > 0.1
    for i in range(T + 1):
        for j in range(i + 1, T + 1):
            assert not torch.allclose(noise[i], noise[j])


def test_zero_when_teacher_equals_student_without_noise() -> None:
    student = _conv_net()
    method = _FixedNoise(torch.zeros(1), uncertainty_passes=T)
    loss, out = method(_engine(student, EMATeacher(student).teacher, threshold=1.0), *_batch())
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(out[SSLKeys.SUPERVISED_LOSS.value].item())


def test_threshold_above_the_maximum_entropy_is_mean_teacher() -> None:
    """With every voxel certain (r > 1: entropy <= ln C < r ln C) the masked loss is Mean Teacher's softmax MSE."""
    student, teacher = _conv_net(), _conv_net()
    with torch.no_grad():
        for p in teacher.parameters():
            p.mul_(0.5)
    labelled, unlabelled = _batch()
    method = UAMTMethod(noise_std=0.0, uncertainty_passes=T)
    engine = _engine(student, teacher, threshold=1.01, weight=0.25)
    loss, out = method(engine, labelled, unlabelled)
    with torch.no_grad():
        expected = softmax_mse(student(unlabelled), teacher(unlabelled))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() == pytest.approx((out[SSLKeys.SUPERVISED_LOSS.value] + 0.25 * expected).item(), rel=1e-5)
    engine.state.uncertainty_threshold = 0.0  # nothing is certain: no consistency at all
    assert method(engine, labelled, unlabelled)[1][SSLKeys.UNSUPERVISED_LOSS.value].item() == 0.0


def test_unsupervised_gradient_reaches_student_not_teacher() -> None:
    student, teacher = _conv_net(), _conv_net()  # the teacher's parameters require grad: only no_grad protects them
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.5)
    # the whole loss with the supervised term switched off: what is left is the masked consistency
    method = UAMTMethod(uncertainty_passes=T, supervised_loss=lambda logits, labels: logits.sum() * 0.0)
    loss, out = method(_engine(student, teacher, threshold=1.0, weight=1.0), *_batch())
    parts = [*student.parameters(), *teacher.parameters()]
    grads = torch.autograd.grad(loss, parts, allow_unused=True)
    n_student = len(list(student.parameters()))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() > 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads[:n_student])
    assert all(g is None for g in grads[n_student:])


def test_missing_threshold_state_fails_at_start_naming_the_handler() -> None:
    student = _conv_net()
    engine = Engine(lambda e, b: None)
    engine.state.teacher, engine.state.consistency_weight = student, 0.1
    UAMTMethod().attach(engine)
    with pytest.raises(RuntimeError, match=r"engine\.state\.uncertainty_threshold.*RampScheduler"):
        engine.run([0], max_epochs=1)


def test_consistency_needs_the_uncertain_teacher_output() -> None:
    student = _conv_net()
    _, unlabelled = _batch()
    logits = student(unlabelled)
    with pytest.raises(TypeError, match="UncertainTeacherOutput"):
        UAMTMethod().consistency(_engine(student, student), logits, logits.detach(), unlabelled)


@pytest.mark.parametrize("passes", [0, -1, 2.5, True])
def test_bad_number_of_passes(passes) -> None:
    with pytest.raises(ValueError, match="uncertainty_passes"):
        UAMTMethod(uncertainty_passes=passes)


def test_strong_views_overlay_reaches_the_student() -> None:
    """``configs/strong_views.json`` works for UA-MT as for Mean Teacher (inherited ``student_view``)."""
    parser = ConfigParser()
    parser.read_config([config("uamt", "train.json"), config("uamt", "strong_views.json")])
    method = parser.get_parsed_content("method")
    assert isinstance(method, UAMTMethod) and isinstance(method, MeanTeacherMethod)
    assert method.student_view is not None and method.uncertainty_passes == 8


def test_threshold_ramp_is_a_handler_and_in_the_checkpoint() -> None:
    """The bundle runs the threshold ramp and saves it in ``checkpoint.pt`` (restored on ``--resume true``)."""
    train = json.loads(Path(config("uamt", "train.json")).read_text())
    assert "@uncertainty_threshold_handler" in json.dumps(train["train"]["handlers"])
    assert train["checkpoint"]["objects"]["uncertainty_threshold"] == "@uncertainty_threshold_handler"
