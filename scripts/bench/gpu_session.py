"""Every GPU figure of the second performance issue in one call, its JSON rewritten after each figure.

A lent GPU comes for about 15 minutes, its start included, so this script measures in the issue's order and writes
``--out`` after every figure (a run stopped by its time limit keeps what it measured; a figure that fails is
recorded with its error and the next one runs):

1. ``end_to_end``: iterations per second end to end (data loading included) and the GPU-busy fraction (NVML or
   ``nvidia-smi`` sampled every 50 ms over the timed iterations) of ``supervised``, ``mean_teacher`` and ``uamt`` at
   96^3 (2 labelled + 2 unlabelled crops, AMP as the bundles default on CUDA), each with the default loaders
   (``num_workers`` 2) and with ``data_device: cuda``; then ``mean_teacher`` with ``configs/la.json`` (V-Net,
   112x112x80, 2 + 2) both ways, against two reference-style loops on the same card and data: SSL4MIS
   ``train_mean_teacher_3D.py``'s loop as written (``LAHeart`` reading each ``.h5`` in 4 workers re-started every
   pass, ``RandomRotFlip`` + ``RandomCrop``, ``TwoStreamBatchSampler``, fp32, a ``.item()`` log line every
   iteration) and the same loop written carefully (persistent workers, pinned memory, no per-iteration sync);
2. ``inference``: the LA protocol's 256x256x128 volume through the mean_teacher bundle's ``inference.json`` +
   ``la.json`` inferer (patch 112x112x80, overlap 0.839/0.839/0.95, gaussian blending, windows and blending on the
   device), AMP and fp32, with the student trained in figure 1: seconds, voxels per second, the mean absolute
   difference of the AMP and fp32 probabilities and their argmax agreement; ``sw_batch_size`` 4 (the bundles') and
   16;
3. ``step``: the Mean Teacher step against the reference-style step (``bench_iteration.py``, fp32, 96^3), then both
   under ``torch.profiler`` (top operators by GPU time, host syncs per iteration);
4. ``methods``: ``bench_methods.py`` for ``layer_ensembles``, ``ugpcl`` and ``urpc`` at 96^3 (their ratios to
   ``supervised`` and to their own backbones);
5. ``compile``: the Mean Teacher step with the student ``torch.compile``-d: compile time and step time against eager.

Synthetic data (SSL4MIS/UA-MT ``.h5`` layout, spheres in noise) is written under ``--data-root`` first: 10 volumes
of 128^3 with 3 classes for the 96^3 runs (4 labelled), 25 of 160x160x96 with 2 classes for the LA runs (16
labelled, 8 unlabelled, as the LA protocol's 16 labelled cases). Timed: 60 iterations after 5 of warm-up.

On the GPU machine, which has torch but not MONAI, Ignite or nibabel (docs/benchmarks.md, "Running the GPU
figures"): make the wheels here once, in the repository root,

    echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
    python3 -m pip download --no-deps --only-binary=:all: -d .whl monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2

then run with ``carry: [".whl"]`` and ``timeout_s: 600``:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 scripts/bench/gpu_session.py --out $OUT/gpu_session.json

``--smoke`` runs every figure on the CPU with tiny sizes (``data_device: cpu`` in place of ``cuda``), so that the
GPU minutes are not lost to a bug:

    python scripts/bench/gpu_session.py --smoke --out results/bench/gpu_session_smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "shared"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_iteration  # noqa: E402
from ignite.engine import Events  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402

BUNDLES_96 = ("supervised", "mean_teacher", "uamt")


@dataclass(frozen=True)
class Sizes:
    """Crop, volume and iteration counts of one session (the GPU's or ``--smoke``'s)."""

    roi: list[int]
    la_roi: list[int]
    volume: list[int]
    la_volume: list[int]
    cases: int
    la_cases: int
    warmup: int
    iterations: int
    infer_shape: list[int]
    step_roi: int
    step_iterations: int
    step_rounds: int
    profile_iterations: int
    methods_args: list[str] = field(default_factory=list)


GPU = Sizes(roi=[96] * 3, la_roi=[112, 112, 80], volume=[128] * 3, la_volume=[160, 160, 96], cases=10, la_cases=25,
            warmup=5, iterations=60, infer_shape=[256, 256, 128], step_roi=96, step_iterations=15, step_rounds=3,
            profile_iterations=6,
            methods_args=["--roi", "96", "--iterations", "8", "--warmup", "3", "--rounds", "1"])
SMOKE = Sizes(roi=[16] * 3, la_roi=[32, 32, 32], volume=[24] * 3, la_volume=[40, 40, 40], cases=6, la_cases=8,
              warmup=1, iterations=2, infer_shape=[40, 40, 36], step_roi=16, step_iterations=2, step_rounds=1,
              profile_iterations=2, methods_args=["--roi", "32", "--iterations", "1", "--warmup", "0", "--rounds", "1"])


# --------------------------------------------------------------------------------------------------------------------
# the session: budget, JSON after every figure
# --------------------------------------------------------------------------------------------------------------------
class Session:
    """Runs figures in order within a wall-clock budget and rewrites the JSON after each one."""

    def __init__(self, out: Path, budget_s: float, sizes: Sizes, device: str, smoke: bool) -> None:
        self.out, self.budget_s, self.sizes, self.device, self.smoke = out, budget_s, sizes, device, smoke
        self.started = time.monotonic()
        self.result: dict[str, Any] = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "smoke": smoke, "device": device, "sizes": asdict(sizes), "figures": {}, "skipped": {}, "errors": {},
        }
        self.shared: dict[str, Any] = {}  # what a later figure reuses (the trained LA student)

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def write(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.result, indent=2, default=str))
        os.replace(tmp, self.out)

    def figure(self, name: str, min_s: float, fn: Callable[[], dict]) -> dict | None:
        """Measure one figure unless less than ``min_s`` of the budget is left; record it or its error."""
        left = self.remaining()
        if left < min_s:
            self.result["skipped"][name] = f"{left:.0f} s of the budget left, {min_s:.0f} s needed"
            print(f"[{self.elapsed():6.1f}s] {name}: skipped ({left:.0f} s left)", flush=True)
            self.write()
            return None
        print(f"[{self.elapsed():6.1f}s] {name} ...", flush=True)
        start = time.monotonic()
        try:
            value = fn()
        except Exception as err:  # a failing figure must not cost the later ones
            self.result["errors"][name] = "".join(traceback.format_exception(err)[-12:])
            print(f"[{self.elapsed():6.1f}s] {name}: FAILED {type(err).__name__}: {err}", flush=True)
            value = None
        else:
            value["figure_wall_s"] = round(time.monotonic() - start, 2)
            self.result["figures"][name] = value
            print(f"[{self.elapsed():6.1f}s] {name}: {_short(value)}", flush=True)
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.write()
        return value

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _short(value: dict) -> str:
    keys = ("iterations_per_s", "s_per_iteration", "gpu_busy", "seconds", "ratio_semiseg_over_reference",
            "compile_s", "steady_ratio_compiled_over_eager")
    return ", ".join(f"{k} {value[k]:.4g}" for k in keys if isinstance(value.get(k), (int, float)))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class GpuBusy:
    """The GPU's utilisation (percent of time a kernel ran) sampled every ``period_s`` while open (NVML, else
    ``nvidia-smi``); ``mean`` is None without a GPU."""

    def __init__(self, device: str, period_s: float = 0.05) -> None:
        self.device, self.period_s = device, period_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> GpuBusy:
        if not self.device.startswith("cuda"):
            return self
        index = torch.device(self.device).index or 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)

            def poll() -> None:
                while not self._stop.is_set():
                    self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                    self._stop.wait(self.period_s)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        except Exception:  # no NVML bindings: the command-line tool
            if shutil.which("nvidia-smi"):
                self._proc = subprocess.Popen(
                    ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     f"-lms={int(self.period_s * 1000)}"], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate()
            self.samples += [float(v) for v in out.split() if v.replace(".", "", 1).isdigit()]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) / 100.0 if self.samples else None


# --------------------------------------------------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------------------------------------------------
def synthetic_case(shape: list[int], num_classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two spheres per foreground class (label 1 .. num_classes - 1) in Gaussian noise: ``(image, label)``."""
    axes = [np.arange(s, dtype=np.float32) for s in shape]
    label = np.zeros(shape, np.uint8)
    for value in range(1, num_classes):
        for _ in range(2):
            centre = [rng.uniform(0.25 * s, 0.75 * s) for s in shape]
            radius = rng.uniform(0.08, 0.18) * min(shape)
            dist = sum(((a - c) ** 2).reshape([-1 if i == j else 1 for j in range(3)])
                       for i, (a, c) in enumerate(zip(axes, centre)))
            label[dist < radius**2] = value
    image = (label.astype(np.float32) + rng.normal(0.0, 0.5, size=shape)).astype(np.float32)
    return image, label


def write_h5_cases(root: Path, cases: int, shape: list[int], num_classes: int, seed: int = 0) -> Path:
    """``cases`` volumes in the SSL4MIS/UA-MT layout (``<id>/mri_norm2.h5`` with ``image``, ``label``;
    ``train.list``, ``test.list`` with the last case): spheres labelled 1 .. num_classes - 1 in Gaussian noise."""
    if (root / "test.list").is_file():
        return root
    rng = np.random.default_rng(seed)
    ids = [f"case{i:03d}" for i in range(cases)]
    for case in ids:
        image, label = synthetic_case(shape, num_classes, rng)
        (root / case).mkdir(parents=True, exist_ok=True)
        with h5py.File(root / case / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
    (root / "train.list").write_text("\n".join(ids[:-1]) + "\n")
    (root / "test.list").write_text(ids[-1] + "\n")
    return root


# --------------------------------------------------------------------------------------------------------------------
# 1. end to end
# --------------------------------------------------------------------------------------------------------------------
def bundle_end_to_end(session: Session, bundle: str, configs: list[str], data: Path, roi: list[int],
                      num_labelled: int, data_device: str | None, keep: str | None = None) -> dict:
    """Iterations per second of a bundle's own training run (its loaders, handlers and checks), end to end."""
    sizes, device = session.sizes, session.device
    total = sizes.warmup + sizes.iterations
    work = Path(tempfile.mkdtemp(prefix=f"gpu_{bundle}_"))
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / c) for c in configs])
    parser.update({
        "dataset_dir": str(data), "roi_size": roi, "num_labelled": num_labelled, "num_val": 0,
        "max_iterations": total, "iterations_per_epoch": total, "log_every": 10, "ckpt_dir": str(work),
        "output_dir": str(work), "overwrite": True, "device": f"$torch.device({device!r})",
        "amp": device.startswith("cuda"), "data_device": data_device, "num_workers": 2, "seed": 0,
    })
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    marks: dict[str, float] = {}
    busy = GpuBusy(device)

    def start(engine: Any) -> None:
        _sync(device)
        busy.__enter__()
        marks["start"] = time.perf_counter()

    def stop(engine: Any) -> None:
        _sync(device)
        marks["stop"] = time.perf_counter()
        busy.__exit__()

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=sizes.warmup), start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=total), stop)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    built = time.perf_counter()
    trainer.run()
    wall = marks["stop"] - marks["start"]
    result = {
        "bundle": bundle, "configs": configs, "roi": roi, "data_device": data_device,
        "loader": type(trainer.train_data_loader).__name__, "num_workers": 2 if data_device is None else 0,
        "amp": bool(trainer.amp), "timed_iterations": sizes.iterations, "warmup": sizes.warmup,
        "s_per_iteration": wall / sizes.iterations, "iterations_per_s": sizes.iterations / wall,
        "gpu_busy": busy.mean, "gpu_busy_samples": len(busy.samples), "run_s_after_build": time.perf_counter() - built,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    if keep is not None:
        session.shared[keep] = {k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()}
    del trainer, parser
    shutil.rmtree(work, ignore_errors=True)
    return result


class LAHeartLike(torch.utils.data.Dataset):
    """SSL4MIS ``LAHeart`` + ``RandomRotFlip`` + ``RandomCrop``: each item read from its ``.h5`` when drawn."""

    def __init__(self, paths: list[Path], roi: list[int]) -> None:
        self.paths, self.roi = paths, roi

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        with h5py.File(self.paths[index], "r") as f:
            image, label = f["image"][:], f["label"][:]
        k = np.random.randint(0, 4)  # RandomRotFlip
        image, label = np.rot90(image, k), np.rot90(label, k)
        axis = np.random.randint(0, 2)
        image, label = np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()
        pads = [max(r - s, 0) for s, r in zip(label.shape, self.roi)]  # RandomCrop (zero-pads short sides)
        if any(pads):
            widths = [(p // 2 + 3, p // 2 + 3) if p else (0, 0) for p in pads]
            image, label = np.pad(image, widths), np.pad(label, widths)
        start = [np.random.randint(0, s - r + 1) for s, r in zip(label.shape, self.roi)]
        region = tuple(slice(b, b + r) for b, r in zip(start, self.roi))
        return {"image": image[region][None].astype(np.float32), "label": label[region].astype(np.int64)}


class TwoStreamBatchSampler(torch.utils.data.Sampler):
    """SSL4MIS ``TwoStreamBatchSampler``: each batch = ``primary_batch`` labelled indices (one shuffled pass) +
    ``secondary_batch`` unlabelled ones (shuffled, repeated without end)."""

    def __init__(self, primary: list[int], secondary: list[int], primary_batch: int, secondary_batch: int) -> None:
        self.primary, self.secondary = primary, secondary
        self.primary_batch, self.secondary_batch = primary_batch, secondary_batch

    def __iter__(self) -> Iterator[list[int]]:
        first = np.random.permutation(self.primary)

        def eternal() -> Iterator[int]:
            while True:
                yield from np.random.permutation(self.secondary)

        second = eternal()
        for i in range(len(self)):
            yield [int(j) for j in first[i * self.primary_batch:(i + 1) * self.primary_batch]] + \
                [int(next(second)) for _ in range(self.secondary_batch)]

    def __len__(self) -> int:
        return len(self.primary) // self.primary_batch


def reference_la_loop(session: Session, data: Path, roi: list[int], num_labelled: int, careful: bool,
                      workers: int = 4) -> dict:
    """SSL4MIS ``train_mean_teacher_3D.py``'s loop on the same data and card (V-Net, 2 + 2, fp32): as written
    (``workers`` loader processes re-started every pass, a ``.item()`` log line every iteration) or ``careful``ly
    (persistent workers, pinned memory, non-blocking copies, no per-iteration sync)."""
    import torch.nn.functional as F

    from semiseg.networks.ssl4mis_vnet import VNet

    sizes, device = session.sizes, torch.device(session.device)
    ids = (data / "train.list").read_text().split()
    paths = [data / i / "mri_norm2.h5" for i in ids]
    sampler = TwoStreamBatchSampler(list(range(num_labelled)), list(range(num_labelled, len(paths))), 2, 2)
    loader = torch.utils.data.DataLoader(
        LAHeartLike(paths, roi), batch_sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=careful and workers > 0, worker_init_fn=lambda worker: np.random.seed(1337 + worker))
    torch.manual_seed(1337)
    np.random.seed(1337)
    model, ema = VNet(1, 2, 16, has_dropout=True).to(device), VNet(1, 2, 16, has_dropout=True).to(device)
    for param in ema.parameters():
        param.detach_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    total, it, marks = sizes.warmup + sizes.iterations, 0, {}
    busy = GpuBusy(session.device)
    model.train()
    ema.train()
    while it < total:
        for batch in loader:
            if it == sizes.warmup:
                _sync(session.device)
                busy.__enter__()
                marks["start"] = time.perf_counter()
            volume = batch["image"].to(device, non_blocking=careful)
            label = batch["label"].to(device, non_blocking=careful)
            unlabelled = volume[2:]
            noise = torch.clamp(torch.randn_like(unlabelled) * 0.1, -0.2, 0.2)
            outputs = model(volume)
            soft = torch.softmax(outputs, dim=1)
            with torch.no_grad():
                ema_soft = torch.softmax(ema(unlabelled + noise), dim=1)
            loss_ce = F.cross_entropy(outputs[:2], label[:2])
            loss_dice = bench_iteration._ssl4mis_dice(soft[:2], label[:2, None])
            consistency = 0.1 * float(np.exp(-5.0 * (1.0 - min(it // 150, 40) / 40) ** 2))
            loss = 0.5 * (loss_dice + loss_ce) + consistency * torch.mean((soft[2:] - ema_soft) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            bench_iteration.reference_ema_update(ema, model, it)
            for group in optimizer.param_groups:
                group["lr"] = 0.01 * (1.0 - it / 6000) ** 0.9
            if not careful:  # logging.info('iteration %d : loss : %f, loss_ce: %f, loss_dice: %f', ...)
                _ = (loss.item(), loss_ce.item(), loss_dice.item())
            it += 1
            if it == total:
                break
    _sync(session.device)
    wall = time.perf_counter() - marks["start"]
    busy.__exit__()
    del loader
    return {"loop": "careful" if careful else "as written", "workers": workers, "roi": roi, "amp": False,
            "timed_iterations": sizes.iterations, "s_per_iteration": wall / sizes.iterations,
            "iterations_per_s": sizes.iterations / wall, "gpu_busy": busy.mean, "gpu_busy_samples": len(busy.samples)}


def end_to_end(session: Session, data_root: Path) -> None:
    sizes, device = session.sizes, session.device
    data96 = write_h5_cases(data_root / "h5_3class", sizes.cases, sizes.volume, 3)
    la = write_h5_cases(data_root / "h5_la", sizes.la_cases, sizes.la_volume, 2, seed=1)
    on_device = device if device.startswith("cuda") else "cpu"
    for bundle in BUNDLES_96:
        for data_device in (None, on_device):
            name = f"end_to_end/{bundle}/{'device' if data_device else 'default'}"
            session.figure(name, 20, lambda b=bundle, d=data_device: bundle_end_to_end(
                session, b, ["train.json"], data96, sizes.roi, 4, d))
    results = session.result["figures"]
    # the LA protocol's 16 labelled cases when there are enough (24 training cases: 16 + 8 unlabelled)
    la_num_labelled = 16 if sizes.la_cases > 24 else (sizes.la_cases - 1) // 2
    for data_device in (None, on_device):
        name = f"end_to_end/mean_teacher_la/{'device' if data_device else 'default'}"
        session.figure(name, 25, lambda d=data_device: bundle_end_to_end(
            session, "mean_teacher", ["train.json", "la.json"], la, sizes.la_roi, la_num_labelled, d,
            keep="la_student"))
    for careful in (False, True):
        name = f"end_to_end/reference_la/{'careful' if careful else 'as_written'}"
        session.figure(name, 20, lambda c=careful: reference_la_loop(session, la, sizes.la_roi, la_num_labelled, c))
    ratios = {}
    for mode in ("default", "device"):
        ours = results.get(f"end_to_end/mean_teacher_la/{mode}")
        for loop in ("as_written", "careful"):
            ref = results.get(f"end_to_end/reference_la/{loop}")
            if ours and ref:
                ratios[f"{mode}_over_{loop}"] = ours["s_per_iteration"] / ref["s_per_iteration"]
    session.result["figures"]["end_to_end/la_ratios"] = ratios
    session.write()


# --------------------------------------------------------------------------------------------------------------------
# 2. inference
# --------------------------------------------------------------------------------------------------------------------
def _windows(shape: list[int], roi: list[int], overlap: Any) -> int | None:
    try:
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        return len(dense_patch_slices(shape, roi, _get_scan_interval(shape, roi, 3, overlap)))
    except Exception:
        return None


def inference(session: Session) -> dict:
    sizes, device = session.sizes, torch.device(session.device)
    configs = [str(REPO / "bundles" / "mean_teacher" / "configs" / c) for c in ("inference.json", "la.json")]
    results: dict[str, Any] = {"shape": sizes.infer_shape, "configs": ["inference.json", "la.json"]}
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"device": f"$torch.device({session.device!r})", "roi_size": sizes.la_roi})
    network = parser.get_parsed_content("network_def").to(device)
    student = session.shared.get("la_student")
    if student is not None:
        network.load_state_dict(student)
    results["weights"] = "the student of end_to_end/mean_teacher_la" if student is not None else "random"
    network.eval()
    overlap = parser.get_parsed_content("overlap")
    results.update({"roi": sizes.la_roi, "overlap": overlap, "blend_mode": parser.get_parsed_content("blend_mode"),
                    "windows": _windows(sizes.infer_shape, sizes.la_roi, overlap)})
    volume, _ = synthetic_case(sizes.infer_shape, 2, np.random.default_rng(2))
    low, high = np.percentile(volume, [0.5, 99.5])  # intensity_norm "percentile", as in training
    volume = np.clip((volume - low) / (high - low), 0.0, 1.0).astype(np.float32)
    image = torch.from_numpy(volume)[None, None].to(device)
    probs: dict[str, torch.Tensor] = {}
    cuda = device.type == "cuda"
    bundle_sw = int(parser.get_parsed_content("sw_batch_size"))
    results["bundle_sw_batch_size"] = bundle_sw
    for sw_batch_size in dict.fromkeys((bundle_sw, 16)):
        parser["sw_batch_size"] = sw_batch_size
        inferer = parser.get_parsed_content("inferer", lazy=False)
        for precision in ("amp", "fp32") if sw_batch_size == bundle_sw else ("amp",):
            times = []
            with torch.no_grad():
                for _ in range(3 if cuda else 1):
                    _sync(session.device)
                    start = time.perf_counter()
                    with torch.autocast(device.type, enabled=precision == "amp" and cuda):
                        logits = inferer(image, network)
                    _sync(session.device)
                    times.append(time.perf_counter() - start)
            key = f"{precision}_sw{sw_batch_size}"
            seconds = min(times[1:]) if len(times) > 1 else times[0]  # the first includes cuDNN's autotuning
            results[key] = {"seconds": seconds, "all_s": times, "voxels_per_s": float(np.prod(sizes.infer_shape))
                            / seconds}
            probs.setdefault(precision, torch.softmax(logits.float(), dim=1))
            session.result["figures"]["inference/partial"] = results
            session.write()
    if "amp" in probs and "fp32" in probs:
        results["mean_abs_prob_diff_amp_vs_fp32"] = float((probs["amp"] - probs["fp32"]).abs().mean())
        results["argmax_agreement_amp_vs_fp32"] = float(
            (probs["amp"].argmax(1) == probs["fp32"].argmax(1)).float().mean())
    session.result["figures"].pop("inference/partial", None)
    results["seconds"] = results.get(f"amp_sw{bundle_sw}", {}).get("seconds")
    return results


# --------------------------------------------------------------------------------------------------------------------
# 3. the step, profiled
# --------------------------------------------------------------------------------------------------------------------
def _batches(roi: int, device: torch.device) -> list:
    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, roi, roi, roi)
    return [((torch.randn(shape, generator=gen).to(device), torch.randint(0, 3, shape, generator=gen).to(device)),
             torch.randn(shape, generator=gen).to(device)) for _ in range(4)]


def step_ratio(session: Session) -> dict:
    sizes, device = session.sizes, torch.device(session.device)
    batches = _batches(sizes.step_roi, device)
    ref, ours = [], []
    n = sizes.step_iterations + 2
    for _ in range(sizes.step_rounds):
        ref += bench_iteration.reference_loop(batches, device, n)[2:]
        ours += bench_iteration.semiseg_loop(batches, device, n)[2:]
    return {"roi": sizes.step_roi, "precision": "fp32", "reference_median_s": statistics.median(ref),
            "semiseg_median_s": statistics.median(ours),
            "ratio_semiseg_over_reference": statistics.median(ours) / statistics.median(ref),
            "ema_update": bench_iteration.ema_bench(device, 20)}


def _semiseg_trainer(batches: list, device: torch.device, iterations: int, compile_backend: str | None = None):
    from semiseg.engines import SemiSupervisedTrainer
    from semiseg.handlers import ConsistencyRampUp, EMATeacher
    from semiseg.losses import ssl4mis_dice_ce
    from semiseg.methods import MeanTeacherMethod

    net = bench_iteration._net(device)
    teacher = EMATeacher(net)  # the teacher is a copy of the eager student
    if compile_backend is not None:
        net.compile(backend=compile_backend)
    labelled = [{"image": x, "label": y} for (x, y), _ in batches]
    unlabelled = [{"image": u} for _, u in batches]
    collate = lambda items: items[0]  # noqa: E731
    return SemiSupervisedTrainer(
        device=device, max_epochs=1, epoch_length=iterations,
        train_data_loader=torch.utils.data.DataLoader(labelled, batch_size=1, collate_fn=collate),
        unlabelled_data_loader=torch.utils.data.DataLoader(unlabelled, batch_size=1, collate_fn=collate),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        method=MeanTeacherMethod(supervised_loss=ssl4mis_dice_ce()), train_handlers=[teacher, ConsistencyRampUp()],
    )


def _profile(run: Callable[[], None], iterations: int, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(str(device))
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        run()
        _sync(str(device))
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    syncs = {e.key: e.count / iterations for e in averages
             if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense", "aten::item",
                          "cudaMemcpyAsync")}
    kernel_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in averages
                    if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"))
    return {"wall_s_per_iteration_profiled": wall / iterations, "syncs_per_iteration": syncs,
            "gpu_kernel_s_per_iteration": kernel_us / 1e6 / iterations if kernel_us else None,
            "top": averages.table(sort_by=sort, row_limit=15)}


def step_profile(session: Session) -> dict:
    sizes, device = session.sizes, torch.device(session.device)
    batches = _batches(sizes.step_roi, device)
    n = sizes.profile_iterations
    bench_iteration.reference_loop(batches, device, 2)  # warm up cuDNN
    reference = _profile(lambda: bench_iteration.reference_loop(batches, device, n), n, device)
    warm = _semiseg_trainer(batches, device, 2)
    warm.run()
    trainer = _semiseg_trainer(batches, device, n)
    semiseg = _profile(trainer.run, n, device)
    return {"roi": sizes.step_roi, "iterations": n, "reference": reference, "semiseg": semiseg,
            "note": "bench_iteration.reference_loop synchronises before and after each iteration to time it"}


# --------------------------------------------------------------------------------------------------------------------
# 4. methods, 5. torch.compile
# --------------------------------------------------------------------------------------------------------------------
def methods(session: Session, data_root: Path, timeout_s: float) -> dict:
    out = session.out.with_name(session.out.stem + "_methods.json")
    command = [sys.executable, str(REPO / "scripts" / "bench" / "bench_methods.py"), "--device", session.device,
               "--bundles", "layer_ensembles", "ugpcl", "urpc", *session.sizes.methods_args,
               "--data-root", str(data_root / "methods"), "--out", str(out)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
        status = f"exit {proc.returncode}"
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
    except subprocess.TimeoutExpired as err:
        status, tail = f"stopped after {timeout_s:.0f} s (partial)", str(err.stdout or "").splitlines()[-10:]
    result = json.loads(out.read_text()) if out.is_file() else {}
    if status.startswith("exit") and status != "exit 0":
        raise RuntimeError(f"bench_methods {status} (what it measured: {out}):\n" + "\n".join(tail))
    return {"status": status, "command": " ".join(command[1:]), "bench_methods": result, "log_tail": tail}


def compiled_step(session: Session) -> dict:
    sizes, device = session.sizes, torch.device(session.device)
    backend = "inductor" if device.type == "cuda" else "eager"  # the smoke test checks the harness, not inductor
    batches = _batches(sizes.step_roi, device)
    n = sizes.step_iterations + 3
    times: dict[str, list[float]] = {}
    for name, compile_backend in (("eager", None), ("compiled", backend)):
        trainer = _semiseg_trainer(batches, device, n, compile_backend)
        laps: list[float] = []
        trainer.add_event_handler(Events.ITERATION_STARTED, lambda e, laps=laps: (
            _sync(str(device)), laps.append(-time.perf_counter())))
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e, laps=laps: (
            _sync(str(device)), laps.__setitem__(-1, laps[-1] + time.perf_counter())))
        trainer.run()
        times[name] = laps
    eager, compiled = statistics.median(times["eager"][3:]), statistics.median(times["compiled"][3:])
    return {"roi": sizes.step_roi, "backend": backend, "precision": "fp32", "compile_s": times["compiled"][0],
            "first_iterations_s": times["compiled"][:3], "eager_median_s": eager, "compiled_median_s": compiled,
            "steady_ratio_compiled_over_eager": compiled / eager}


# --------------------------------------------------------------------------------------------------------------------
def environment(session: Session) -> dict:
    import ignite
    import monai

    env = {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
           "ignite": ignite.__version__, "cpu_cores": os.cpu_count(), "cuda": torch.version.cuda}
    if session.device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(session.device))
        with contextlib.suppress(Exception):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"],
                capture_output=True, text=True, timeout=20).stdout.strip()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "gpu_session.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole session")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU: checks the script end to end")
    parser.add_argument("--only", nargs="*", choices=["end_to_end", "inference", "step", "methods", "compile"],
                        help="run only these figures (default: all, in the issue's order)")
    parser.add_argument("--data-root", type=Path, default=None, help="synthetic data (default: a temporary folder)")
    args = parser.parse_args()
    device = "cpu" if args.smoke else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device: run on the GPU machine, or pass --smoke to check the script on the CPU")
    sizes = SMOKE if args.smoke else GPU
    session = Session(args.out, args.budget_s, sizes, device, args.smoke)
    data_root = args.data_root or Path(tempfile.mkdtemp(prefix="gpu_session_data_"))
    wanted = set(args.only or ["end_to_end", "inference", "step", "methods", "compile"])
    torch.backends.cudnn.benchmark = False  # as the bundles run
    session.figure("environment", 0, lambda: environment(session))
    if "end_to_end" in wanted:
        end_to_end(session, data_root)
    if "inference" in wanted:
        session.figure("inference", 20, lambda: inference(session))
    if "step" in wanted:
        session.figure("step/ratio", 15, lambda: step_ratio(session))
        session.figure("step/profile", 15, lambda: step_profile(session))
    if "methods" in wanted:
        reserve = 90.0 if "compile" in wanted else 0.0
        session.figure("methods", 60, lambda: methods(session, data_root, max(30.0, session.remaining() - reserve)))
    if "compile" in wanted:
        session.figure("compile", 60, lambda: compiled_step(session))
    session.result["done"] = True
    session.write()
    print(f"wrote {args.out} ({session.elapsed():.0f} s); errors: {sorted(session.result['errors']) or 'none'}; "
          f"skipped: {sorted(session.result['skipped']) or 'none'}", flush=True)


if __name__ == "__main__":
    main()
