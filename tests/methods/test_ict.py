"""Interpolation Consistency Training (Verma et al., IJCAI 2019; SSL4MIS 3D setup, docs/architecture.md §3)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from semiseg.handlers import EMATeacher
from semiseg.keys import SSLKeys
from semiseg.methods import ICTMethod
from semiseg.methods.ict import interpolate_pairs


class _Recorder(nn.Module):
    """A 1x1x1 convolution that records its inputs (one entry per forward pass)."""

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([weight, -weight]).view(2, 1, 1, 1, 1))
            self.conv.bias.zero_()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        return self.conv(x)


def _engine(student: nn.Module, teacher: nn.Module, weight: float = 0.5) -> SimpleNamespace:
    return SimpleNamespace(network=student, state=SimpleNamespace(teacher=teacher, consistency_weight=weight))


def _fixed(lam: list[float]) -> ICTMethod:
    method = ICTMethod()
    method.sample_lambda = lambda num_pairs: torch.tensor(lam[:num_pairs])  # type: ignore[method-assign]
    return method


def test_interpolate_pairs_by_hand() -> None:
    # items 0,1 mixed with items 2,3: lam = (0.25, 0.5)
    batch = torch.tensor([1.0, 2.0, 5.0, 10.0]).view(4, 1, 1, 1, 1)
    mixed = interpolate_pairs(batch, torch.tensor([0.25, 0.5]))
    # 0.25 * 1 + 0.75 * 5 = 4.0; 0.5 * 2 + 0.5 * 10 = 6.0
    assert mixed.flatten().tolist() == [4.0, 6.0]
    with pytest.raises(ValueError, match=r"one mixing factor per pair of the 4-item batch, shape \(2,\)"):
        interpolate_pairs(batch, torch.tensor([0.5]))


def test_student_sees_the_mix_and_the_target_is_the_mix_of_teacher_softmaxes() -> None:
    """lam = 0.25 on u_a = 1, u_b = 3 (constant 1-voxel volumes), student and teacher logits (w x, -w x)."""
    student, teacher = _Recorder(weight=1.0), _Recorder(weight=0.5)
    images, labels = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    unlabelled = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)
    loss, out = _fixed([0.25])(_engine(student, teacher, weight=0.5), (images, labels), unlabelled)

    # student: one pass over [labelled, mix]; mix = 0.25 * 1 + 0.75 * 3 = 2.5
    assert len(student.inputs) == 1
    assert student.inputs[0].flatten().tolist() == [0.0, 2.5]
    # teacher: two passes, u_a then u_b, unmixed and without noise
    assert [t.flatten().tolist() for t in teacher.inputs] == [[1.0], [3.0]]

    # teacher logits (0.5 u, -0.5 u): softmax class 0 = sigmoid(u), so p_a0 = sigmoid(1), p_b0 = sigmoid(3)
    p_a0, p_b0 = torch.sigmoid(torch.tensor(1.0)), torch.sigmoid(torch.tensor(3.0))  # 0.731059, 0.952574
    target0 = 0.25 * p_a0 + 0.75 * p_b0  # 0.897196
    # student logits (2.5, -2.5): softmax class 0 = sigmoid(5) = 0.993307
    s0 = torch.sigmoid(torch.tensor(5.0))
    # two classes with equal and opposite errors: mean of (s0 - t0)^2 and (s1 - t1)^2 = (s0 - t0)^2 = 0.0092373
    expected_unsup = (s0 - target0) ** 2
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(expected_unsup.item(), rel=1e-5)
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(0.0092373, rel=1e-4)
    assert out["mix_lambda"].item() == 0.25
    assert loss.item() == pytest.approx(out[SSLKeys.SUPERVISED_LOSS.value].item() + 0.5 * expected_unsup.item(),
                                        rel=1e-6)
    assert out["pred"].shape == (1, 2, 1, 1, 1)  # the labelled logits only


def test_pairs_are_the_two_halves_with_one_lambda_each() -> None:
    """Four unlabelled crops (2 cases x 2 crops, crops of a case adjacent): pairs (0, 2) and (1, 3)."""
    student, teacher = _Recorder(), _Recorder()
    images, labels = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    unlabelled = torch.tensor([1.0, 2.0, 5.0, 10.0]).view(4, 1, 1, 1, 1)
    _fixed([0.25, 0.5])(_engine(student, teacher), (images, labels), unlabelled)
    # 0.25 * 1 + 0.75 * 5 = 4.0; 0.5 * 2 + 0.5 * 10 = 6.0
    assert student.inputs[0].flatten().tolist() == [0.0, 4.0, 6.0]
    assert [t.flatten().tolist() for t in teacher.inputs] == [[1.0, 2.0], [5.0, 10.0]]


def test_odd_configured_unlabelled_batch_is_refused_with_its_size() -> None:
    for items in (3, 1):
        with pytest.raises(ValueError, match=rf"unlabelled_batch_size x num_samples\) must be even .* got {items}"):
            ICTMethod(unlabelled_batch_items=items)
    ICTMethod(unlabelled_batch_items=4)


def test_short_odd_batch_leaves_its_last_item_out() -> None:
    """A 3-item batch (a short batch): one pair (items 0 and 1), item 2 has no partner."""
    student, teacher = _Recorder(), _Recorder()
    images, labels = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    unlabelled = torch.tensor([1.0, 3.0, 7.0]).view(3, 1, 1, 1, 1)
    _fixed([0.25])(_engine(student, teacher), (images, labels), unlabelled)
    assert student.inputs[0].flatten().tolist() == [0.0, 2.5]  # 0.25 * 1 + 0.75 * 3
    assert [t.flatten().tolist() for t in teacher.inputs] == [[1.0], [3.0]]


def test_single_case_batch_has_no_consistency_and_warns() -> None:
    student, teacher = _Recorder(), _Recorder()
    images, labels = torch.rand(1, 1, 2, 2, 2), torch.randint(0, 2, (1, 1, 2, 2, 2))
    with pytest.warns(UserWarning, match="no pair of distinct cases"):
        loss, out = ICTMethod()(_engine(student, teacher), (images, labels), torch.rand(1, 1, 2, 2, 2))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == 0.0 and "mix_lambda" not in out
    assert loss.item() == pytest.approx(out[SSLKeys.SUPERVISED_LOSS.value].item())
    assert student.inputs[0].shape[0] == 1 and teacher.inputs == []  # the labelled image alone; no teacher pass


def test_bad_alpha_is_refused() -> None:
    with pytest.raises(ValueError, match="alpha > 0"):
        ICTMethod(alpha=0.0)


def test_consistency_zero_when_teacher_equals_student_and_lambda_is_one() -> None:
    """lam = 1: the mix is u_a itself and the target the teacher's softmax on u_a; teacher == student gives 0."""
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, 3, 1))
    teacher = EMATeacher(student).teacher
    gen = torch.Generator().manual_seed(1)
    images, labels = torch.randn(2, 1, 6, 6, 6, generator=gen), torch.randint(0, 3, (2, 1, 6, 6, 6), generator=gen)
    loss, out = _fixed([1.0])(_engine(student, teacher), (images, labels), torch.randn(2, 1, 6, 6, 6, generator=gen))
    assert out[SSLKeys.UNSUPERVISED_LOSS.value].item() == pytest.approx(0.0, abs=1e-12)
    assert loss.item() == pytest.approx(out[SSLKeys.SUPERVISED_LOSS.value].item())


def test_gradient_reaches_the_student_only() -> None:
    student, teacher = _Recorder(weight=1.0), _Recorder(weight=0.3)
    teacher.requires_grad_(True)  # even a teacher with trainable parameters gets no gradient
    images, labels = torch.rand(1, 1, 2, 2, 2), torch.randint(0, 2, (1, 1, 2, 2, 2))
    loss, _ = _fixed([0.4])(_engine(student, teacher, weight=1.0), (images, labels), torch.rand(2, 1, 2, 2, 2))
    loss.backward()
    assert student.conv.weight.grad is not None and student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_lambda_is_beta_distributed_and_reproducible_under_the_torch_seed() -> None:
    method = ICTMethod(alpha=0.2)
    torch.manual_seed(3)
    first = method.sample_lambda(20000)
    torch.manual_seed(3)
    assert torch.equal(first, method.sample_lambda(20000))
    assert first.shape == (20000,) and first.dtype == torch.float32
    assert ((first >= 0) & (first <= 1)).all()
    # Beta(0.2, 0.2): mean 1/2, variance a b / ((a + b)^2 (a + b + 1)) = 0.04 / (0.16 * 1.4) = 0.178571
    assert first.mean().item() == pytest.approx(0.5, abs=0.01)
    assert first.var().item() == pytest.approx(0.178571, abs=0.005)


def test_student_view_is_mixed_and_the_teacher_keeps_the_weak_crops() -> None:
    student, teacher = _Recorder(), _Recorder()
    images, labels = torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, dtype=torch.long)
    unlabelled = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)
    method = ICTMethod(student_view=lambda u: 10.0 * u)
    method.sample_lambda = lambda num_pairs: torch.tensor([0.25])  # type: ignore[method-assign]
    method(_engine(student, teacher), (images, labels), unlabelled)
    # the mix of the strong views: 0.25 * 10 + 0.75 * 30 = 25.0
    assert student.inputs[0].flatten().tolist() == [0.0, 25.0]
    assert [t.flatten().tolist() for t in teacher.inputs] == [[1.0], [3.0]]


def test_missing_teacher_names_its_handler() -> None:
    engine = SimpleNamespace(state=SimpleNamespace(teacher=None, consistency_weight=0.1))
    with pytest.raises(RuntimeError, match="EMATeacher"):
        ICTMethod()._check_state(engine)
