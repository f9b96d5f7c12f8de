"""The colour jitter of UGPCL's training images (taovv/UGPCL configs/comparison_acdc_224_136/ugpcl_unet_r50.yaml:
torchvision ColorJitter brightness 0.4, contrast 0.4, p 0.8), built from MONAI transforms."""

from __future__ import annotations

import pytest
import torch
from monai.data import CacheDataset
from monai.transforms import Compose, Lambdad, RandFlipd

from semiseg.data.colour_jitter import colour_jitter, with_transforms


def _jitter(image: torch.Tensor, seed: int, **kwargs) -> torch.Tensor:
    transform = colour_jitter(**kwargs)
    transform.set_random_state(seed)
    return torch.as_tensor(transform({"image": image.clone()})["image"])


def test_brightness_scales_by_one_factor_in_its_range_and_clips_at_one() -> None:
    # torchvision adjust_brightness: clip(b x, 0, 1), b ~ U(0.6, 1.4)
    x = torch.linspace(0.1, 0.9, 27).reshape(1, 3, 3, 3)
    for seed in range(8):
        y = _jitter(x, seed, contrast=0.0, prob=1.0)
        factor = y[0, 0, 0, 0] / x[0, 0, 0, 0]
        assert 0.6 <= float(factor) <= 1.4
        torch.testing.assert_close(y, (factor * x).clamp(0.0, 1.0))


def test_contrast_blends_with_the_mean_in_its_range() -> None:
    # torchvision adjust_contrast: clip(c x + (1 - c) mean(x), 0, 1), c ~ U(0.6, 1.4); a narrow range around 0.5 so
    # nothing is clipped: the mean is kept and x - mean is scaled by c
    x = torch.linspace(0.4, 0.6, 27).reshape(1, 3, 3, 3)
    for seed in range(8):
        y = _jitter(x, seed, brightness=0.0, prob=1.0)
        factor = (y[0, 0, 0, 0] - x.mean()) / (x[0, 0, 0, 0] - x.mean())
        assert 0.6 <= float(factor) <= 1.4
        torch.testing.assert_close(y, factor * x + (1 - factor) * x.mean())


def test_both_in_either_order_with_probability_p() -> None:
    x = torch.linspace(0.0, 1.0, 64).reshape(1, 4, 4, 4)
    changed = [not torch.equal(_jitter(x, seed), x) for seed in range(200)]
    assert 0.7 < sum(changed) / 200 < 0.9  # p = 0.8
    assert all(torch.equal(_jitter(x, seed, prob=0.0), x) for seed in range(5))
    y = _jitter(x, 0, prob=1.0)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0  # clipped to torchvision's range after each step
    # without the clip (e.g. z-scored images) a brightening factor is not clipped
    unclipped = [_jitter(x, seed, contrast=0.0, prob=1.0, clip=None) for seed in range(8)]
    assert any(float(u.max()) > 1.0 for u in unclipped)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="brightness must lie in"):
        colour_jitter(brightness=1.5)
    with pytest.raises(ValueError, match="clip must be"):
        colour_jitter(clip=(1.0, 0.0))


def test_appended_to_a_training_chain_the_deterministic_head_stays_cached() -> None:
    loads = []

    def load(x: torch.Tensor) -> torch.Tensor:
        loads.append(1)
        return x

    chain = Compose([Lambdad("image", load), RandFlipd("image", prob=0.5)])
    full = with_transforms(chain, colour_jitter())
    assert [type(t).__name__ for t in full.transforms] == ["Lambdad", "RandFlipd", "OneOf"]
    dataset = CacheDataset([{"image": torch.rand(1, 4, 4, 4)} for _ in range(2)], full, progress=False)
    loads.clear()
    for _ in range(3):
        dataset[0], dataset[1]
    assert loads == []  # the load ran at caching time only
