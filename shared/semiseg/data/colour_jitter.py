"""Colour jitter of a grey-value volume: torchvision's ``ColorJitter`` brightness and contrast, from MONAI transforms.

UGPCL's training images get ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8)`` (reference
code ``taovv/UGPCL`` ``configs/comparison_acdc_224_136/ugpcl_unet_r50.yaml`` and ``codes/dataloaders/
_transforms.py``, on grey slices repeated into three channels). With probability ``p`` it applies, in a random
order, torchvision's

- brightness ``x -> clip(b x)``, ``b ~ U(1 - brightness, 1 + brightness)``;
- contrast ``x -> clip(c x + (1 - c) mean(x))``, ``c ~ U(1 - contrast, 1 + contrast)``, the mean over the image;

where ``clip`` is to [0, 1] (torchvision's range of float images). Saturation and hue leave a grey image unchanged
(its three channels are equal), so they are left out. Here the same is built from MONAI transforms:
``RandScaleIntensityd`` (``x (1 + f)``), ``RandScaleIntensityFixedMeand`` (``(x - mean) (1 + f) + mean``), each
followed by the clip, in a ``RandomOrder``, chosen with probability ``p`` by ``OneOf``. For a multi-channel volume the
mean is taken over all channels.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    Identityd,
    OneOf,
    RandomOrder,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    ScaleIntensityRanged,
)

__all__ = ["colour_jitter", "with_transforms"]


def colour_jitter(
    keys: KeysCollection = "image",
    brightness: float = 0.4,
    contrast: float = 0.4,
    prob: float = 0.8,
    clip: Sequence[float] | None = (0.0, 1.0),
) -> OneOf:
    """torchvision ``ColorJitter(brightness, contrast, p)`` on ``keys`` (see the module docstring).

    Args:
        keys: the image keys.
        brightness: half-width of the brightness factor's range around 1 (UGPCL: 0.4).
        contrast: half-width of the contrast factor's range around 1 (UGPCL: 0.4).
        prob: probability that the jitter is applied at all (UGPCL: 0.8).
        clip: ``(low, high)`` intensities are clipped to after each step (torchvision's [0, 1], the range of
            percentile-normalised images); None for no clipping (e.g. z-scored images).

    Returns:
        A MONAI dictionary transform.

    Raises:
        ValueError: on a factor outside [0, 1], a probability outside [0, 1], or a bad ``clip``.
    """
    for name, value in (("brightness", brightness), ("contrast", contrast), ("prob", prob)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"colour_jitter {name} must lie in [0, 1], got {value!r}.")
    if clip is not None and (len(clip) != 2 or not float(clip[0]) < float(clip[1])):
        raise ValueError(f"colour_jitter clip must be (low, high) with low < high, or None, got {clip!r}.")

    def clipped(step: object) -> object:
        if clip is None:
            return step
        low, high = float(clip[0]), float(clip[1])
        return Compose([step, ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=low, b_max=high, clip=True)])

    steps = []
    if brightness > 0:
        steps.append(clipped(RandScaleIntensityd(keys, factors=float(brightness), prob=1.0)))
    if contrast > 0:
        steps.append(clipped(RandScaleIntensityFixedMeand(keys, factors=float(contrast), fixed_mean=True, prob=1.0)))
    return OneOf([RandomOrder(steps), Identityd(keys)], weights=[float(prob), 1.0 - float(prob)])


def with_transforms(chain: Compose, *extra: object) -> Compose:
    """``chain`` followed by ``extra`` transforms, as one flat ``Compose``.

    Flat, so that ``CacheDataset`` still caches ``chain``'s deterministic head (it looks for the first random
    transform among the ``Compose``'s own items, and a nested ``Compose`` counts as random).

    Args:
        chain: a training chain (``semiseg.data.transforms.labelled_train_transforms`` or the unlabelled one).
        extra: transforms to run after it on every crop.

    Returns:
        The flattened ``Compose``.
    """
    return Compose([chain, *extra]).flatten()
