"""Mean Teacher method (Tarvainen & Valpola 2017; SSL4MIS 3D setup, docs/architecture.md §3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from semiseg.handlers import EMATeacher
from semiseg.keys import SSLKeys
from semiseg.methods import MeanTeacherMethod, SupervisedMethod, teacher_noise


class _Engine:
    """The two attributes a method reads from the trainer: ``network`` and ``state``."""

    def __init__(self, network: nn.Module, teacher: nn.Module | None, weight: float = 0.5) -> None:
        self.network = network
        self.state = type("State", (), {})()
        setattr(self.state, SSLKeys.TEACHER.value, teacher)
        setattr(self.state, SSLKeys.CONSISTENCY_WEIGHT.value, weight)


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))


def _batch() -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 1, 6, 6, 6, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=gen)
    return (images, labels), torch.randn(2, 1, 6, 6, 6, generator=gen)


class _NoNoiseMT(MeanTeacherMethod):
    def sample_noise(self, unlabelled: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(unlabelled)


def test_consistency_zero_when_teacher_equals_student_without_noise() -> None:
    student = _conv_net()
    engine = _Engine(student, EMATeacher(student).teacher)
    loss, out = _NoNoiseMT()(engine, *_batch())
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(out[SSLKeys.SUPERVISED_LOSS.value].item())


def test_unsupervised_gradient_reaches_student_not_teacher() -> None:
    student = _conv_net()
    ema = EMATeacher(student)
    with torch.no_grad():
        for p in ema.teacher.parameters():
            p.add_(0.5)
    method = MeanTeacherMethod()
    engine = _Engine(student, ema.teacher)
    labelled, unlabelled = _batch()
    # isolate the unsupervised term: consistency only, through compute's pieces
    logits_u = student(unlabelled)
    unsup = method.consistency(engine, logits_u, method.teacher_forward(engine, unlabelled), unlabelled)
    unsup.backward()
    assert unsup.item() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in ema.teacher.parameters())


def test_total_loss_is_sup_plus_weighted_consistency() -> None:
    student = _conv_net()
    ema = EMATeacher(student)
    with torch.no_grad():
        for p in ema.teacher.parameters():
            p.mul_(0.5)
    engine = _Engine(student, ema.teacher, weight=0.25)
    loss, out = _NoNoiseMT()(engine, *_batch())
    expected = out[SSLKeys.SUPERVISED_LOSS.value] + 0.25 * out[SSLKeys.UNSUPERVISED_LOSS.value]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out[SSLKeys.CONSISTENCY_WEIGHT.value].item() == 0.25
    assert out["pred"].shape == (2, 3, 6, 6, 6)


def test_teacher_noise_is_clipped_gaussian() -> None:
    noise = teacher_noise(torch.zeros(20000), std=0.1, clip=0.2, generator=torch.Generator().manual_seed(0))
    assert noise.abs().max().item() == pytest.approx(0.2)
    assert 0.09 < noise.std().item() < 0.1  # clipping at 2 sigma shrinks the std slightly


def test_needs_an_unlabelled_batch() -> None:
    student = _conv_net()
    labelled, _ = _batch()
    with pytest.raises(ValueError, match="unlabelled"):
        MeanTeacherMethod()(_Engine(student, student), labelled, None)


def test_supervised_method_ignores_unlabelled() -> None:
    student = _conv_net()
    labelled, _ = _batch()
    loss, out = SupervisedMethod()(_Engine(student, None), labelled, None)
    assert SupervisedMethod.requires_unlabelled is False
    assert loss.requires_grad and SSLKeys.UNSUPERVISED_LOSS.value not in out


def test_teacher_noise_is_relative_to_each_images_spread() -> None:
    """0.1 image standard deviations, the reference's 0.1 on z-scored volumes, whatever the intensity scaling."""
    gen = torch.Generator().manual_seed(0)
    images = torch.cat([torch.randn(1, 1, 24, 24, 24, generator=gen),
                        4.0 * torch.randn(1, 1, 24, 24, 24, generator=gen)])
    torch.manual_seed(0)
    noise = MeanTeacherMethod(noise_scale="image_std").sample_noise(images)
    ratio = noise[1].std() / noise[0].std()
    assert ratio.item() == pytest.approx(4.0, rel=0.05)
    assert noise[1].abs().max().item() <= 0.2 * images[1].std().item() + 1e-6
    torch.manual_seed(0)
    absolute = MeanTeacherMethod(noise_scale="absolute").sample_noise(images)
    assert (absolute[1].std() / absolute[0].std()).item() == pytest.approx(1.0, rel=0.05)
    assert absolute.abs().max().item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="noise_scale"):
        MeanTeacherMethod(noise_scale="std")


def test_student_view_reaches_the_student_and_not_the_teacher() -> None:
    """With a strong view the student sees the transformed unlabelled crops; the teacher sees the weak ones."""
    seen: dict[str, torch.Tensor] = {}

    class Recorder(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name, self.conv = name, torch.nn.Conv3d(1, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen[self.name] = x.detach().clone()
            return self.conv(x)

    engine = SimpleNamespace(network=Recorder("student"),
                             state=SimpleNamespace(teacher=Recorder("teacher"), consistency_weight=0.1))
    images, labels = torch.rand(1, 1, 8, 8, 8), torch.randint(0, 2, (1, 1, 8, 8, 8))
    unlabelled = torch.rand(2, 1, 8, 8, 8)
    method = MeanTeacherMethod(noise_std=0.0, student_view=lambda u: 1.0 - u)
    method(engine, (images, labels), unlabelled)
    assert torch.equal(seen["student"][1:], 1.0 - unlabelled)
    assert torch.equal(seen["teacher"], unlabelled)


class _FixedNoiseMT(MeanTeacherMethod):
    """The teacher noise fixed to a known tensor, so what the teacher sees can be checked exactly."""

    def __init__(self, noise: torch.Tensor) -> None:
        super().__init__()
        self.noise = noise

    def sample_noise(self, unlabelled: torch.Tensor) -> torch.Tensor:
        return self.noise


class _Recorder(nn.Module):
    """Records its input, returns logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.conv(x)


def test_teacher_sees_the_unlabelled_batch_plus_the_sampled_noise() -> None:
    """``teacher_forward`` feeds ``x_u + n`` with ``n`` from :meth:`sample_noise` (docs/architecture.md §3)."""
    (images, labels), unlabelled = _batch()
    noise = torch.full_like(unlabelled, 0.05)
    teacher = _Recorder()
    engine = _Engine(_conv_net(), teacher, weight=0.5)
    method = _FixedNoiseMT(noise)
    method.teacher_forward(engine, unlabelled)
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], unlabelled + noise)
    teacher.seen.clear()
    method(engine, (images, labels), unlabelled)  # and through the whole loss
    assert len(teacher.seen) == 1 and torch.equal(teacher.seen[0], unlabelled + noise)


def test_default_teacher_input_is_noisy_within_the_clip() -> None:
    """With the default noise (0.1 image std, clipped at 0.2 image std) the teacher's input differs from the
    student's unlabelled batch at almost every voxel, by at most the clip."""
    (images, labels), unlabelled = _batch()
    teacher = _Recorder()
    torch.manual_seed(0)
    MeanTeacherMethod()(_Engine(_conv_net(), teacher), (images, labels), unlabelled)
    difference = teacher.seen[0] - unlabelled
    bound = 0.2 * unlabelled.flatten(1).std(dim=1).view(-1, 1, 1, 1, 1)
    assert (difference != 0).float().mean().item() > 0.99
    assert (difference.abs() <= bound + 1e-6).all()
