"""entropy_loss (docs/architecture.md §3, normalised by log C) and gaussian_kl (BPL, Xu et al. 2022 Eq. 7)."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg.losses import entropy_loss, entropy_map, gaussian_kl


def test_entropy_uniform_is_one_and_certain_is_zero() -> None:
    uniform = torch.full((1, 4, 2, 2, 2), 0.25)
    assert entropy_loss(uniform).item() == pytest.approx(1.0, abs=1e-5)
    certain = torch.zeros(1, 4, 2, 2, 2)
    certain[:, 0] = 1.0
    assert entropy_loss(certain).item() == pytest.approx(0.0, abs=1e-5)


def test_entropy_hand_computed() -> None:
    p = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1, 1)
    expected = -(0.75 * math.log(0.75 + 1e-6) + 0.25 * math.log(0.25 + 1e-6)) / math.log(2)
    assert entropy_loss(p).item() == pytest.approx(expected, rel=1e-6)
    assert entropy_map(p).shape == (1, 1, 1, 1, 1)


def test_entropy_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="2 classes"):
        entropy_map(torch.ones(1, 1, 2, 2, 2))


def test_gaussian_kl_zero_for_equal_and_hand_computed() -> None:
    mu, logvar = torch.tensor([0.3]), torch.tensor([-1.0])
    assert gaussian_kl(mu, logvar, mu, logvar).item() == pytest.approx(0.0, abs=1e-7)
    # N(0, 1) || N(1, 2^2): log 2 - 0 + (1 + 1) / 8 - 0.5 = log 2 - 0.25
    kl = gaussian_kl(torch.tensor([0.0]), torch.tensor([0.0]), 1.0, math.log(4.0))
    assert kl.item() == pytest.approx(math.log(2.0) - 0.25, rel=1e-6)


def test_gaussian_kl_bpl_prior() -> None:
    # posterior N(0.5, 0.1^2) vs BPL prior N(0.7, 0.15^2): log(0.15/0.1) + (0.01 + 0.04) / (2 * 0.0225) - 0.5
    kl = gaussian_kl(torch.tensor([0.5]), torch.tensor([2 * math.log(0.1)]), 0.7, 2 * math.log(0.15))
    assert kl.item() == pytest.approx(math.log(1.5) + 0.05 / 0.045 - 0.5, rel=1e-5)
