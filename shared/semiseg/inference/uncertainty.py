"""Sliding-window inference that returns class probabilities and a per-voxel entropy map."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from contextlib import nullcontext

import torch
from monai.config import KeysCollection
from monai.inferers import SlidingWindowInferer
from monai.transforms import MapTransform

from ..losses.entropy import entropy_map

__all__ = ["sliding_window_inferer", "predict_with_uncertainty", "EntropyMapd"]


def sliding_window_inferer(
    roi_size: Sequence[int], sw_batch_size: int = 4, overlap: float = 0.25, mode: str = "gaussian", **kwargs
) -> SlidingWindowInferer:
    """MONAI's ``SlidingWindowInferer`` with semiseg's defaults (gaussian blending, 25% overlap).

    See docs/architecture.md §5.

    Args:
        roi_size: patch size, normally the training crop.
        sw_batch_size: patches per forward pass.
        overlap: fraction of overlap between patches.
        mode: blending, ``"gaussian"`` or ``"constant"``.
        kwargs: other ``SlidingWindowInferer`` arguments (``sw_device``, ``device``, ``progress``, ...).

    Returns:
        The inferer.
    """
    return SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, **kwargs)


@torch.no_grad()
def predict_with_uncertainty(
    network: torch.nn.Module, images: torch.Tensor, inferer: SlidingWindowInferer, amp: bool | None = None
) -> dict[str, torch.Tensor]:
    """Run ``inferer`` and return ``probs`` (softmax), ``entropy`` (normalised, in [0, 1]) and ``seg`` (argmax).

    Args:
        network: segmentation network returning logits ``(B, C, *spatial)``; put in eval mode here.
        images: ``(B, C_in, *spatial)`` on the network's device.
        inferer: usually :func:`sliding_window_inferer`.
        amp: autocast (fp16) the forward passes; default: on when ``images`` is on CUDA.

    Returns:
        ``{"probs": (B, C, ...), "entropy": (B, 1, ...), "seg": (B, 1, ...)}``.
    """
    network.eval()
    amp = images.is_cuda if amp is None else amp
    context = torch.autocast("cuda") if amp and images.is_cuda else nullcontext()
    with context:
        logits = inferer(images, network)
    probs = torch.softmax(logits.float(), dim=1)
    return {"probs": probs, "entropy": entropy_map(probs), "seg": probs.argmax(dim=1, keepdim=True)}


class EntropyMapd(MapTransform):
    """Add the normalised entropy of channel-first class probabilities under ``output_key``.

    For dictionary post-processing after ``Activationsd(softmax=True)`` and before ``AsDiscreted(argmax=True)``:
    the segmentation stays under ``pred`` (what MONAI Label restores) and the uncertainty goes under its own key.

    Args:
        keys: the probability key (one).
        output_key: where to write the map (``"entropy"``).
        allow_missing_keys: MONAI's usual flag.
    """

    def __init__(self, keys: KeysCollection, output_key: str = "entropy", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"EntropyMapd takes one probability key, got {self.keys}.")
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.output_key] = entropy_map(d[key].unsqueeze(0)).squeeze(0)
        return d
