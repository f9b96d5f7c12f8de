"""Weak and strong views of an unlabelled batch for teacher-student methods (FixMatch / UniMatch style).

Sohn et al., "FixMatch", NeurIPS 2020, Sec. 2.3 (the teacher's target from a weakly augmented view, the student's
prediction on a strongly augmented one); Yang et al., "UniMatch", CVPR 2023 (image-level perturbations of the
student's view). In 3-D medical images the strong view is an *appearance* change, built from MONAI's random
intensity transforms (contrast/gamma, bias field, histogram shift, blur, noise, intensity scale): voxels do not move,
so the teacher's prediction on the weak view stays aligned with the student's input and no warping is needed.

Off by default: the bundles' ``configs/strong_views.json`` overlay turns it on (``docs/architecture.md`` §2).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandBiasField,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandHistogramShift,
    RandScaleIntensity,
)

__all__ = ["StrongView", "strong_intensity_view"]


def strong_intensity_view(
    prob: float = 0.8,
    gamma: Sequence[float] = (0.5, 2.0),
    bias_coeff: Sequence[float] = (0.0, 0.3),
    histogram_points: Sequence[int] = (5, 15),
    blur_sigma: Sequence[float] = (0.25, 1.0),
    noise_std: float = 0.05,
    scale: Sequence[float] = (-0.25, 0.25),
) -> Compose:
    """MONAI random intensity transforms for one channel-first volume (no spatial change).

    Args:
        prob: probability of each transform.
        gamma: ``RandAdjustContrast`` gamma range.
        bias_coeff: ``RandBiasField`` coefficient range.
        histogram_points: ``RandHistogramShift`` control points range.
        blur_sigma: ``RandGaussianSmooth`` sigma range (voxels, every axis).
        noise_std: ``RandGaussianNoise`` maximal std (images are scaled to [0, 1] by the bundles).
        scale: ``RandScaleIntensity`` factor range (``x * (1 + f)``).

    Returns:
        The composed array transform.
    """
    blur = tuple(blur_sigma)
    return Compose(
        [
            RandAdjustContrast(prob=prob, gamma=tuple(gamma)),
            RandBiasField(prob=prob, coeff_range=tuple(bias_coeff)),
            RandHistogramShift(prob=prob, num_control_points=tuple(histogram_points)),
            RandGaussianSmooth(prob=prob, sigma_x=blur, sigma_y=blur, sigma_z=blur),
            RandScaleIntensity(prob=prob, factors=tuple(scale)),
            RandGaussianNoise(prob=prob, std=noise_std),
        ]
    )


class StrongView:
    """Apply a per-volume array transform to every item of a ``(B, C, *spatial)`` batch, keeping dtype and device.

    Args:
        transform: a channel-first array transform, default :func:`strong_intensity_view`.

    Raises:
        ValueError: if the transform changes an item's shape (a spatial transform would misalign the views).
    """

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.transform = strong_intensity_view() if transform is None else transform

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        items = []
        for item in batch.detach():
            out = torch.as_tensor(self.transform(item), dtype=batch.dtype).to(batch.device)
            if out.shape != item.shape:
                raise ValueError(
                    f"the strong view changed a volume's shape from {tuple(item.shape)} to {tuple(out.shape)}: use "
                    "intensity transforms only, so the teacher's target stays aligned with the student's input."
                )
            items.append(out)
        return torch.stack(items)
