"""softmax_mse = mean((softmax(s) - softmax(t))^2) (Tarvainen & Valpola 2017; docs/architecture.md §3)."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg.losses import softmax_mse


def test_hand_computed_two_class_voxel() -> None:
    # student logits (0, 0) -> p = (0.5, 0.5); teacher logits (log 3, 0) -> p = (0.75, 0.25)
    s = torch.zeros(1, 2, 1, 1, 1)
    t = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)
    # ((0.5 - 0.75)^2 + (0.5 - 0.25)^2) / 2 = 0.0625
    assert softmax_mse(s, t).item() == pytest.approx(0.0625)


def test_zero_when_equal_and_gradient_flows_to_student_only_when_teacher_detached() -> None:
    s = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    assert softmax_mse(s, s.detach()).item() == 0.0
    t = torch.randn(2, 3, 4, 4, 4)
    softmax_mse(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_none_reduction_and_shape_check() -> None:
    s, t = torch.randn(1, 2, 3, 3, 3), torch.randn(1, 2, 3, 3, 3)
    assert softmax_mse(s, t, reduction="none").shape == s.shape
    assert softmax_mse(s, t, reduction="none").mean().item() == pytest.approx(softmax_mse(s, t).item())
    with pytest.raises(ValueError, match="equal shape"):
        softmax_mse(s, torch.randn(1, 3, 3, 3, 3))
