"""Tiny networks and in-memory data for tests (CPU, volumes <= 64^3)."""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import UNet


def tiny_unet(num_classes: int = 3, dropout: float = 0.0) -> UNet:
    """A two-level UNet small enough for a CPU iteration in milliseconds."""
    return UNet(3, 1, num_classes, channels=(4, 8), strides=(2,), num_res_units=0, norm="batch", dropout=dropout)


def labelled_items(n: int = 2, size: int = 16, num_classes: int = 3, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        label = torch.randint(0, num_classes, (1, size, size, size), generator=gen)
        image = label.float() + 0.3 * torch.randn(1, size, size, size, generator=gen)
        items.append({"image": image, "label": label})
    return items


def unlabelled_items(n: int = 3, size: int = 16, seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(1, size, size, size, generator=gen)} for _ in range(n)]


def states_equal(a: Any, b: Any) -> bool:
    """Exact equality of nested state dicts (tensors compared with ``torch.equal``)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(states_equal(x, y) for x, y in zip(a, b))
    return a == b
