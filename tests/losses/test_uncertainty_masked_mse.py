"""UA-MT's uncertainty-masked consistency (Yu et al., MICCAI 2019, Sec. 2; docs/architecture.md §3):
``sum(mask (softmax(s) - p_t)^2) / (C sum(mask) + 1e-16)``, ``mask = uncertainty < threshold``."""

from __future__ import annotations

import pytest
import torch

from semiseg.losses import softmax_mse, uncertainty_masked_mse


def _three_voxels() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits 0 (softmax 0.5 / 0.5) on 3 voxels of 2 classes, teacher targets and uncertainties."""
    student = torch.zeros(1, 2, 1, 1, 3)
    teacher = torch.tensor([[1.0, 0.8, 0.5], [0.0, 0.2, 0.5]]).reshape(1, 2, 1, 1, 3)
    uncertainty = torch.tensor([0.1, 0.5, 0.9]).reshape(1, 1, 1, 1, 3)
    return student, teacher, uncertainty


def test_masked_mse_normaliser_counts_classes_times_certain_voxels() -> None:
    student, teacher, uncertainty = _three_voxels()
    # threshold 0.6: voxels 0 and 1 are certain, voxel 2 (0.9) is not.
    # voxel 0: (0.5 - 1)^2 + (0.5 - 0)^2 = 0.25 + 0.25 = 0.5
    # voxel 1: (0.5 - 0.8)^2 + (0.5 - 0.2)^2 = 0.09 + 0.09 = 0.18
    # sum = 0.68; normaliser C * sum(mask) = 2 * 2 = 4  ->  0.68 / 4 = 0.17
    loss = uncertainty_masked_mse(student, teacher, uncertainty, 0.6)
    assert loss.item() == pytest.approx(0.17, abs=1e-7)
    # voxel 2 differs nowhere from the student, so only the normaliser changes when it counts: 0.68 / (2 * 3)
    assert uncertainty_masked_mse(student, teacher, uncertainty, 1.0).item() == pytest.approx(0.68 / 6, abs=1e-7)


def test_the_threshold_is_strict_and_may_be_a_tensor() -> None:
    student, teacher, uncertainty = _three_voxels()
    # uncertainty 0.5 == threshold: voxel 1 does not count -> voxel 0 alone: 0.5 / (2 * 1) = 0.25
    assert uncertainty_masked_mse(student, teacher, uncertainty, torch.tensor(0.5)).item() == pytest.approx(0.25)


def test_no_certain_voxel_gives_zero_not_nan() -> None:
    student, teacher, uncertainty = _three_voxels()
    # sum(mask) = 0: 0 / (2 * 0 + 1e-16) = 0
    assert uncertainty_masked_mse(student, teacher, uncertainty, 0.05).item() == 0.0


def test_all_voxels_certain_is_the_mean_teacher_consistency() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 3, 4, 4, 4, generator=gen), torch.randn(2, 3, 4, 4, 4, generator=gen)
    uncertainty = torch.zeros(2, 1, 4, 4, 4)
    loss = uncertainty_masked_mse(student, torch.softmax(teacher, 1), uncertainty, 1.0)
    assert loss.item() == pytest.approx(softmax_mse(student, teacher).item(), rel=1e-6)


def test_gradient_reaches_the_student_only_through_certain_voxels() -> None:
    student, teacher, uncertainty = _three_voxels()
    student = (student + torch.tensor([0.3, -0.2, 0.7]).reshape(1, 1, 1, 1, 3)).requires_grad_()
    uncertainty_masked_mse(student, teacher, uncertainty, 0.6).backward()
    assert student.grad is not None
    assert student.grad[..., :2].abs().sum() > 0
    assert torch.equal(student.grad[..., 2], torch.zeros_like(student.grad[..., 2]))


def test_half_precision_inputs_sum_in_float32() -> None:
    student = torch.zeros(1, 2, 64, 64, 32, dtype=torch.float16)  # 131072 voxels: more than float16's max 65504
    teacher = torch.zeros(1, 2, 64, 64, 32, dtype=torch.float16)
    teacher[:, 0] = 1.0
    loss = uncertainty_masked_mse(student, teacher, torch.zeros(1, 1, 64, 64, 32, dtype=torch.float16), 0.5)
    # every voxel: (0.5 - 1)^2 + (0.5 - 0)^2 = 0.5, over C = 2 -> 0.25
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("teacher_shape", "uncertainty_shape", "threshold", "match"),
    [
        ((1, 3, 1, 1, 3), (1, 1, 1, 1, 3), 0.5, "teacher_probs"),
        ((1, 2, 1, 1, 3), (1, 2, 1, 1, 3), 0.5, "one uncertainty per voxel"),
        ((1, 2, 1, 1, 3), (1, 1, 3), 0.5, "one uncertainty per voxel"),
        ((1, 2, 1, 1, 3), (1, 1, 1, 1, 3), torch.tensor([0.5, 0.6]), "single threshold"),
    ],
)
def test_bad_shapes_name_the_argument(teacher_shape: tuple, uncertainty_shape: tuple, threshold, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        uncertainty_masked_mse(torch.zeros(1, 2, 1, 1, 3), torch.zeros(teacher_shape), torch.zeros(uncertainty_shape),
                               threshold)
