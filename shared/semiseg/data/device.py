"""The ``data_device`` setting: training volumes cached on a device and cropped, turned and flipped there.

By default (``data_device`` null) the training loaders are MONAI's ``CacheDataset`` (the deterministic part of the
chain, loading and normalisation, cached in host memory) and a ``DataLoader`` whose ``num_workers`` worker processes
crop and augment on the CPU. On a GPU that leaves the step waiting on the host (docs/benchmarks.md). With
``data_device`` set to ``"cuda"`` the training data follow the pattern of MONAI's fast-training tutorial
(Project-MONAI/tutorials, ``acceleration/fast_training_tutorial.ipynb``):

- the cached volumes are moved to the device once, when the cache is filled (``EnsureTyped(device=...)`` at the end
  of the deterministic part of :func:`semiseg.data.transforms.labelled_train_transforms`), with the foreground and
  background voxel indices of the foreground-balanced crop computed once and kept in host memory
  (``FgBgToIndicesd``), so no crop waits on the device;
- the random part of the chain (crops, quarter turns, flips) runs on the device tensors, batch after batch, in one
  background thread (MONAI ``ThreadDataLoader``, no worker processes), so the next batch is prepared while the step
  runs; the cache is read without a copy (``copy_cache=False``: the random transforms never write into their
  input);
- :func:`cache_dataset` refuses in one line, before anything is loaded, when the cache would not fit the device's
  free memory (:func:`check_cache_fits`).

``data_device: "cpu"`` runs the same device-style chain and loader on the CPU (what the tests check: for the same
seed it gives exactly the crops of the default chain). Validation keeps the default loaders. Intensity
perturbations of the recipe (the teacher's input noise, strong views) are not part of the data chain: the methods
apply them to the batches on the trainer's device already.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, ThreadDataLoader
from monai.transforms import Compose

from semiseg.data.volumes import read_shape
from semiseg.errors import SettingError

__all__ = [
    "BYTES_PER_VOXEL",
    "cache_dataset",
    "check_cache_fits",
    "data_loader",
    "device_of",
    "estimate_cache_bytes",
]

BYTES_PER_VOXEL = 4
"""Bytes a cached voxel takes: the training chain loads images and labels as float32 (``LoadVolumed``'s dtype)."""


def device_of(data_device: str | torch.device | None) -> torch.device | None:
    """The ``data_device`` setting as a device, or None for the default loaders.

    Args:
        data_device: null, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Returns:
        The device, or None; ``"cuda"`` is the process's current CUDA device.

    Raises:
        SettingError: for another value, or a CUDA device that torch does not see.
    """
    if data_device is None or (isinstance(data_device, str) and data_device.strip().lower() in ("", "null", "none")):
        return None
    try:
        device = torch.device(data_device)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise SettingError(
            f"setting data_device must be null, 'cpu', 'cuda' or 'cuda:N', got {data_device!r}: pass --data_device "
            "cuda to crop and augment on the GPU, or leave it null (nothing was run)."
        )
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise SettingError(
            f"setting data_device {data_device!r} needs a CUDA device, and torch sees "
            f"{torch.cuda.device_count() if torch.cuda.is_available() else 'none'}: leave data_device null to train "
            "with the default loaders (nothing was run)."
        )
    if device.type == "cuda" and device.index is None:
        # the process's current device (each rank's own under multi_gpu_train.json), fixed now: the cache is filled
        # by worker threads, whose current device is the first GPU whatever the main thread's is
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def estimate_cache_bytes(
    data: Sequence[Mapping[str, Any]], count: int, keys: Sequence[str] = ("image", "label")
) -> int:
    """Bytes that the first ``count`` items of ``data`` take once loaded, from the files' headers alone.

    Each volume counts ``voxels x channels x`` :data:`BYTES_PER_VOXEL`; padding to the crop size (volumes smaller than
    the crop) is not counted, so for such data sets the estimate is low.

    Args:
        data: the data list (``{"image": path, "label": path}`` items).
        count: how many items the cache holds (CacheDataset caches the first ones).
        keys: the keys whose volumes are cached.

    Returns:
        The estimate in bytes.

    Raises:
        semiseg.data.DataValidationError: if a header cannot be read, naming the file.
    """
    total = 0
    for item in list(data)[: max(0, int(count))]:
        for key in keys:
            if key in item and isinstance(item[key], str):
                total += math.prod(read_shape(item[key], key)) * BYTES_PER_VOXEL
    return total


def check_cache_fits(
    data: Sequence[Mapping[str, Any]],
    count: int,
    device: torch.device,
    headroom: float = 0.2,
    keys: Sequence[str] = ("image", "label"),
) -> int:
    """Refuse, in one line, a cache of ``count`` items of ``data`` that would not fit the CUDA device's free memory.

    The cache fits when :func:`estimate_cache_bytes` is at most the free memory (``torch.cuda.mem_get_info``) less
    ``headroom`` of the device's total memory, kept for the networks, their activations and the batches.

    Args:
        data: the data list.
        count: items cached.
        device: a CUDA device.
        headroom: fraction of the device's total memory kept free for training.
        keys: the keys whose volumes are cached.

    Returns:
        The estimated cache size in bytes.

    Raises:
        SettingError: when the cache would not fit, with its size, the free memory and what to do.
    """
    needed = estimate_cache_bytes(data, count, keys)
    free, total = torch.cuda.mem_get_info(device)
    room = free - headroom * total
    if needed > room:
        gib = 2.0**30
        raise SettingError(
            f"data_device {str(device)!r}: the training cache of {count} case(s) needs about {needed / gib:.1f} GiB "
            f"of GPU memory, but {free / gib:.1f} GiB of the device's {total / gib:.1f} GiB are free and "
            f"{headroom * total / gib:.1f} GiB are kept for training: lower --cache_rate (or --unlabelled_cache_num), "
            "or leave --data_device null to cache in host memory (nothing was trained)."
        )
    return needed


def cache_dataset(
    data: Sequence[Any],
    transform: Compose,
    data_device: str | torch.device | None = None,
    cache_num: int = sys.maxsize,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    progress: bool = False,
    headroom: float = 0.2,
) -> CacheDataset:
    """A training set as MONAI's ``CacheDataset``; with a CUDA ``data_device``, checked to fit the device first.

    Without ``data_device`` this is ``CacheDataset(data, transform, cache_num, cache_rate, num_workers, progress)``
    as before the setting existed. With it, the cache is checked to fit (:func:`check_cache_fits`, CUDA only) and read
    without a copy (``copy_cache=False``); the transform chain must be the device-style one
    (:func:`semiseg.data.transforms.labelled_train_transforms` with the same ``data_device``), which moves the cached
    volumes to the device.

    Args:
        data: the data list.
        transform: the training chain.
        data_device: see :func:`device_of`.
        cache_num: at most this many items cached (CacheDataset's argument).
        cache_rate: fraction of the items cached (CacheDataset's argument).
        num_workers: threads that fill the cache (CacheDataset's argument).
        progress: show a progress bar while caching.
        headroom: see :func:`check_cache_fits`.

    Returns:
        The data set.

    Raises:
        SettingError: for a bad ``data_device``, or a cache that would not fit.
    """
    device = device_of(data_device)
    if device is not None and device.type == "cuda":
        count = min(int(cache_num), int(len(data) * cache_rate), len(data))
        check_cache_fits(data, count, device, headroom)
    return CacheDataset(
        data=data, transform=transform, cache_num=cache_num, cache_rate=cache_rate, num_workers=num_workers,
        progress=progress, copy_cache=device is None,
    )


def data_loader(
    dataset: Any,
    data_device: str | torch.device | None = None,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    persistent_workers: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A training loader: MONAI's ``DataLoader``, or with ``data_device`` a ``ThreadDataLoader`` without workers.

    Without ``data_device`` this is ``DataLoader(dataset, batch_size, shuffle, num_workers, persistent_workers, ...)``
    as before the setting existed. With it the random transforms run on the device tensors in one background thread
    (``ThreadDataLoader``, ``num_workers=0``; ``num_workers`` then only sets the threads that fill the cache, in
    :func:`cache_dataset`). The loader gets its own torch generator (seeded from torch's global one when none is
    given), so that its shuffling, drawn in that thread, never races with the training step's draws from the global
    generator and a seeded run draws the same batches every time.

    Args:
        dataset: the data set.
        data_device: see :func:`device_of`.
        batch_size: items per batch.
        shuffle: reshuffle at every pass.
        num_workers: worker processes (default loader only).
        persistent_workers: keep the workers between passes (default loader only).
        generator: the torch generator of the shuffling and of the transforms' seeds (MONAI's ``DataLoader``).
        kwargs: other ``DataLoader`` arguments (``sampler``, ``drop_last``, ...).

    Returns:
        The loader.

    Raises:
        SettingError: for a bad ``data_device``.
    """
    if device_of(data_device) is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                          persistent_workers=persistent_workers, generator=generator, **kwargs)
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    return ThreadDataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, generator=generator,
                            **kwargs)
