"""Sliding-window inference with uncertainty (docs/architecture.md §5): probabilities, entropy, segmentation."""

from __future__ import annotations

import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from semiseg.inference import EntropyMapd, predict_with_uncertainty, sliding_window_inferer
from tests.helpers import tiny_unet


def test_defaults_are_gaussian_blending_with_overlap() -> None:
    inferer = sliding_window_inferer((16, 16, 16))
    assert isinstance(inferer, SlidingWindowInferer)
    assert inferer.mode == "gaussian" and inferer.overlap == 0.25 and inferer.sw_batch_size == 4


def test_predict_returns_probs_entropy_and_argmax_on_a_volume_larger_than_the_window() -> None:
    torch.manual_seed(0)
    net = tiny_unet()
    image = torch.randn(1, 1, 24, 20, 18)
    out = predict_with_uncertainty(net, image, sliding_window_inferer((16, 16, 16)))
    assert out["probs"].shape == (1, 3, 24, 20, 18)
    assert torch.allclose(out["probs"].sum(1), torch.ones(1, 24, 20, 18), atol=1e-5)
    assert out["entropy"].shape == (1, 1, 24, 20, 18)
    assert 0.0 <= out["entropy"].min() and out["entropy"].max() <= 1.0 + 1e-5
    assert torch.equal(out["seg"], out["probs"].argmax(1, keepdim=True))
    assert not net.training


class _Constant(torch.nn.Module):
    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits).view(1, -1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1, *x.shape[2:]).clone()


def test_entropy_values_hand_computed() -> None:
    # logits (0, 0) -> p = (0.5, 0.5) -> entropy 1; logits (log 3, 0) -> (0.75, 0.25)
    image = torch.zeros(1, 1, 8, 8, 8)
    uniform = predict_with_uncertainty(_Constant([0.0, 0.0]), image, sliding_window_inferer((8, 8, 8)))
    assert uniform["entropy"].mean().item() == pytest.approx(1.0, abs=1e-5)
    skewed = predict_with_uncertainty(_Constant([math.log(3.0), 0.0]), image, sliding_window_inferer((8, 8, 8)))
    expected = -(0.75 * math.log(0.75 + 1e-6) + 0.25 * math.log(0.25 + 1e-6)) / math.log(2)
    assert skewed["entropy"].mean().item() == pytest.approx(expected, rel=1e-5)


def test_entropy_mapd_keeps_pred_and_adds_entropy() -> None:
    probs = torch.softmax(torch.randn(3, 4, 4, 4), 0)
    out = EntropyMapd(keys="pred")({"pred": probs})
    assert torch.equal(out["pred"], probs)
    assert out["entropy"].shape == (1, 4, 4, 4)
    with pytest.raises(ValueError, match="one probability key"):
        EntropyMapd(keys=["a", "b"])
