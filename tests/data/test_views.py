"""Strong views for the student (FixMatch, Sohn et al. 2020): intensities change, geometry does not."""

from __future__ import annotations

import pytest
import torch
from monai.utils import set_determinism

from semiseg.data.views import StrongView, strong_intensity_view


def _cube_batch() -> torch.Tensor:
    batch = torch.full((2, 1, 24, 24, 24), 0.2)
    batch[0, :, 4:10, 6:14, 8:12] = 0.9
    batch[1, :, 12:20, 2:8, 14:22] = 0.7
    return batch


def _centre_of_mass(volume: torch.Tensor) -> torch.Tensor:
    weights = (volume - volume.min()).clamp_min(0)[0]
    grid = torch.stack(torch.meshgrid(*(torch.arange(s, dtype=torch.float32) for s in weights.shape), indexing="ij"))
    return (grid * weights).flatten(1).sum(1) / weights.sum()


def test_strong_view_changes_intensities_and_keeps_geometry() -> None:
    set_determinism(seed=0)
    batch = _cube_batch()
    # every transform applied; bias field and noise off so that a threshold can find the structure again
    view = StrongView(strong_intensity_view(prob=1.0, noise_std=0.0, bias_coeff=(0.0, 0.0)))
    out = view(batch)
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert (out - batch).abs().mean() > 0.01  # appearance changed
    bright_in, bright_out = batch > 0.5, out > (out.amin(dim=(2, 3, 4), keepdim=True) + out.amax(dim=(2, 3, 4),
                                                                                               keepdim=True)) / 2
    for i in range(2):  # the structure stays where it was: same centre of mass, same bright region (up to blur)
        assert torch.allclose(_centre_of_mass(batch[i] * bright_in[i]), _centre_of_mass(out[i] * bright_out[i]),
                              atol=0.75)
        assert (bright_in[i] == bright_out[i]).float().mean() > 0.95
    set_determinism(seed=None)


def test_strong_view_refuses_a_spatial_transform() -> None:
    with pytest.raises(ValueError, match="intensity transforms only"):
        StrongView(lambda x: x[:, ::2])(_cube_batch())


def test_strong_view_is_made_of_intensity_transforms_only() -> None:
    """No transform that moves voxels can slip in: the teacher's weak-view target must stay aligned."""
    for transform in strong_intensity_view().transforms:
        assert type(transform).__module__ == "monai.transforms.intensity.array", type(transform)
    set_determinism(seed=1)
    batch = _cube_batch()
    out = StrongView()(batch)  # the default view, bias field and noise included
    assert out.shape == batch.shape and not torch.allclose(out, batch)
    set_determinism(seed=None)
