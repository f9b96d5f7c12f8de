"""Ramps against docs/architecture.md §3: sigmoid_rampup(t, L) = exp(-5 (1 - clip(t, 0, L)/L)^2) (Laine & Aila 2017)."""

from __future__ import annotations

import math

import pytest

from semiseg.ramps import cosine_rampdown, linear_rampup, sigmoid_rampup


def test_sigmoid_rampup_start_is_exp_minus_5() -> None:
    assert sigmoid_rampup(0, 40) == pytest.approx(math.exp(-5.0))


def test_sigmoid_rampup_end_and_beyond_is_one() -> None:
    assert sigmoid_rampup(40, 40) == 1.0
    assert sigmoid_rampup(400, 40) == 1.0


def test_sigmoid_rampup_midpoint_hand_computed() -> None:
    # t = 10, L = 40: phase = 0.75, exp(-5 * 0.5625) = exp(-2.8125) = 0.060054667...
    assert sigmoid_rampup(10, 40) == pytest.approx(0.0600546678, rel=1e-8)


def test_sigmoid_rampup_zero_length_is_one() -> None:
    assert sigmoid_rampup(0, 0) == 1.0


def test_sigmoid_rampup_clips_negative_time() -> None:
    assert sigmoid_rampup(-5, 40) == sigmoid_rampup(0, 40)


def test_negative_length_rejected() -> None:
    with pytest.raises(ValueError, match="length"):
        sigmoid_rampup(1, -1)


def test_linear_rampup() -> None:
    assert linear_rampup(0, 10) == 0.0
    assert linear_rampup(2.5, 10) == 0.25
    assert linear_rampup(20, 10) == 1.0
    assert linear_rampup(3, 0) == 1.0


def test_cosine_rampdown() -> None:
    assert cosine_rampdown(0, 10) == 1.0
    assert cosine_rampdown(5, 10) == pytest.approx(0.5)
    assert cosine_rampdown(10, 10) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        cosine_rampdown(1, 0)
