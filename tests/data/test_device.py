"""semiseg.data.device (the ``data_device`` setting): the device-style chain and loader, run on the CPU.

The device-style pipeline (cache on the device, foreground indices precomputed, random transforms on the cached
tensors in a ``ThreadDataLoader``) draws from the same MONAI random transforms in the same order as the default one,
so for the same seeds it must give exactly the same crops; these tests hold it to that, batch for batch.
"""

from __future__ import annotations

import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, ThreadDataLoader

from semiseg.bundle_checks import check_settings
from semiseg.data.device import (
    BYTES_PER_VOXEL,
    cache_dataset,
    check_cache_fits,
    data_loader,
    device_of,
    estimate_cache_bytes,
)
from semiseg.data.transforms import labelled_train_transforms, unlabelled_train_transforms
from semiseg.engines.trainer import DataCycle
from semiseg.errors import SettingError
from semiseg.handlers.random_state import get_random_state, set_random_state

SHAPE = (20, 18, 16)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Five 20x18x16 cases, each with its own intensities and a foreground box (labels 1 and 2) in its own place."""
    root = tmp_path_factory.mktemp("device_cases")
    rng = np.random.default_rng(0)
    items = []
    for i in range(5):
        image = (50 + 10 * i + 20 * rng.normal(size=SHAPE)).astype(np.float32)
        label = np.zeros(SHAPE, np.uint8)
        label[i : i + 6, 2 * i : 2 * i + 5, 3:9] = 1
        label[i + 1 : i + 3, 2 * i + 1 : 2 * i + 3, 4:6] = 2
        item = {}
        for key, array in (("image", image), ("label", label)):
            item[key] = str(root / f"case{i}_{key}.nii.gz")
            nib.save(nib.Nifti1Image(array, np.eye(4)), item[key])
        items.append(item)
    return items


def _loaders(cases, chain_kwargs: dict, unlabelled: bool = False, seed: int = 7):
    """The default pipeline and the device-style one on the CPU, with the same seeds."""
    factory = unlabelled_train_transforms if unlabelled else labelled_train_transforms
    data = [{"image": c["image"]} for c in cases] if unlabelled else cases
    default = DataLoader(
        CacheDataset(data, factory(**chain_kwargs), num_workers=1, progress=False),
        batch_size=2, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed),
    )
    device = data_loader(
        cache_dataset(data, factory(**chain_kwargs, data_device="cpu"), data_device="cpu", num_workers=1),
        data_device="cpu", batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(seed),
    )
    return default, device


@pytest.mark.parametrize(
    "chain_kwargs",
    [
        {"label_crop": "balanced"},
        {"label_crop": "uniform"},
        {"label_crop": "balanced", "rot90": True, "intensity_norm": "zscore", "num_samples": 1},
    ],
    ids=["balanced", "uniform", "balanced-rot90-zscore-1sample"],
)
def test_device_style_labelled_pipeline_gives_the_default_crops(cases, chain_kwargs: dict) -> None:
    default, device = _loaders(cases, {"roi_size": [8, 8, 8], **chain_kwargs})
    assert isinstance(device, ThreadDataLoader) and device.num_workers == 0
    assert not device.dataset.copy_cache
    batches = 0
    for a, b in zip(DataCycle(default), DataCycle(device)):  # 3 batches a pass: crosses two reshuffles
        assert set(a) == set(b)  # the precomputed indices are used up by the crop
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())
        assert torch.equal(a["label"].as_tensor(), b["label"].as_tensor())
        assert a["image"].meta["filename_or_obj"] == b["image"].meta["filename_or_obj"]
        batches += 1
        if batches == 8:
            break
    assert a["image"].shape == (2 * chain_kwargs.get("num_samples", 2), 1, 8, 8, 8)


def test_device_style_unlabelled_pipeline_gives_the_default_crops(cases) -> None:
    default, device = _loaders(cases, {"roi_size": [8, 8, 8], "rot90": True}, unlabelled=True)
    for _, a, b in zip(range(6), DataCycle(default), DataCycle(device)):
        assert torch.equal(a["image"].as_tensor(), b["image"].as_tensor())


def test_the_random_transforms_never_write_into_the_uncopied_cache(cases) -> None:
    dataset = cache_dataset(cases, labelled_train_transforms([8, 8, 8], rot90=True, data_device="cpu"),
                            data_device="cpu", num_workers=1)
    before = [{k: (v.clone(), len(getattr(v, "applied_operations", []))) for k, v in item.items()}
              for item in dataset._cache]
    loader = data_loader(dataset, data_device="cpu", batch_size=2, shuffle=True)
    for _, batch in zip(range(6), DataCycle(loader)):
        batch["image"].add_(1.0)  # a method that writes into its batch must not reach the cache either
    for item, saved in zip(dataset._cache, before):
        assert set(item) == set(saved)
        for key, (value, operations) in saved.items():
            assert torch.equal(item[key], value), key
            assert len(getattr(item[key], "applied_operations", [])) == operations, key


def test_cache_estimate_counts_every_cached_voxel_from_the_headers(cases) -> None:
    voxels = int(np.prod(SHAPE))
    assert estimate_cache_bytes(cases, 3) == 3 * 2 * voxels * BYTES_PER_VOXEL
    assert estimate_cache_bytes([{"image": c["image"]} for c in cases], 10) == 5 * voxels * BYTES_PER_VOXEL


def test_a_cache_that_would_not_fit_the_gpu_is_refused_in_one_line(cases, monkeypatch: pytest.MonkeyPatch) -> None:
    needed = 4 * 2 * int(np.prod(SHAPE)) * BYTES_PER_VOXEL
    total = 10 * needed
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (needed + 2 * needed - 1, total))
    with pytest.raises(SettingError) as err:  # free 3 x needed - 1, minus 20% of 10 x needed kept: too little
        check_cache_fits(cases, 4, torch.device("cuda"))
    message = str(err.value)
    assert "\n" not in message and "data_device" in message and "--cache_rate" in message
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (3 * needed, total))
    assert check_cache_fits(cases, 4, torch.device("cuda")) == needed


def test_data_device_values() -> None:
    assert device_of(None) is None and device_of("null") is None
    assert device_of("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", 3):
        with pytest.raises(SettingError, match="data_device"):
            device_of(bad)
    check_settings(data_device=None)
    check_settings(data_device="cpu")
    with pytest.raises(SettingError, match="data_device"):
        check_settings(data_device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(SettingError, match="needs a CUDA device"):
            check_settings(data_device="cuda")
        with pytest.raises(SettingError, match="needs a CUDA device"):
            device_of("cuda:0")


def test_default_loaders_are_monais_own(cases) -> None:
    dataset = cache_dataset(cases, labelled_train_transforms([8, 8, 8]), num_workers=1)
    loader = data_loader(dataset, batch_size=2, shuffle=True, num_workers=0)
    assert type(dataset) is CacheDataset and dataset.copy_cache
    assert type(loader) is DataLoader and not isinstance(loader, ThreadDataLoader)


@pytest.mark.parametrize("drawn", [4, 3], ids=["mid-pass", "end-of-pass"])
def test_a_thread_loader_cycle_resumes_with_the_crops_of_the_uninterrupted_run(cases, drawn: int) -> None:
    """The loader's thread prepares the next batch (advancing the crops' generators) before the state is saved; the
    replay starts from the pass's own recorded states, so the resumed cycle still draws the uninterrupted batches.
    Saved at the end of a pass, the next pass is shuffled by the loader's own generator as saved."""

    def build() -> DataLoader:
        dataset = cache_dataset(cases, labelled_train_transforms([8, 8, 8], rot90=True, data_device="cpu"),
                                data_device="cpu", num_workers=1)
        return data_loader(dataset, data_device="cpu", batch_size=2, shuffle=True,
                           generator=torch.Generator().manual_seed(3))

    loader = build()
    cycle = DataCycle(loader)
    for _ in range(drawn):  # pass 0 has 3 batches
        next(cycle)
    time.sleep(0.2)  # let the thread prepare the next batch, as it does while a step runs
    state, rng = cycle.state_dict(), get_random_state(loader)
    later = [next(cycle)["image"].as_tensor() for _ in range(4)]

    loader = build()
    resumed = DataCycle(loader)
    resumed.load_state_dict(state)
    set_random_state(rng, loader)  # the transforms' states as saved: ahead of the batches drawn
    replayed = [next(resumed)["image"].as_tensor() for _ in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(replayed, later))
