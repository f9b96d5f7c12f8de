"""Each bundle's training-iteration cost and peak memory relative to ``supervised``, run as the bundle is configured.

Every bundle in ``bundles/`` (or ``--bundles``) is built from its own ``configs/train.json`` (network, method,
handlers, optimisers, data pipeline), pointed at a generated demo data set, and run for ``--warmup +
--iterations`` iterations in a fresh subprocess (so peak memory is the bundle's own). The iteration is timed
between Ignite's ``ITERATION_STARTED`` and ``ITERATION_COMPLETED`` events, with the time spent fetching the
unlabelled batch (inside the iteration, :meth:`SemiSupervisedTrainer._next_unlabelled`) reported apart, so

    step = iteration - unlabelled fetch                (forward/backward passes, losses, optimiser, EMA, checks)
    data = labelled fetch + unlabelled fetch           (``GET_BATCH_*`` events + the above)

Every bundle sees the same number of student samples per iteration: a bundle without an unlabelled loader
(``supervised``, ``layer_ensembles``) gets ``batch_size + unlabelled_batch_size`` labelled crops (4 = 2 + 2 by
default), and ``bpl`` (2 + 1 by default) gets 2 + 2, so ``step(method) / step(supervised)`` isolates what the method
adds (teacher passes, extra networks and heads, losses, queues). ``urpc`` and ``ugpcl`` bring their own networks, so
they are also timed against ``supervised@urpc`` / ``supervised@ugpcl``: the supervised bundle on the same backbone
without the method's extra heads and decoders (:func:`same_backbone`), the ratio that isolates the method there.
Bundles run in rounds (all bundles once per round, in a rotated order), so machine drift hits all of them; the JSON
has per-bundle medians over rounds and the ratios to ``supervised`` (and to the same backbone).
The JSON is rewritten after every bundle (with ``"partial": true`` until the last one), so a run stopped by a
time limit keeps what it measured. Terms that a bundle starts late (UGPCL's contrastive loss, at 10% of the run) are
switched on from the first iteration (``STEADY_STATE``), so every bundle is timed in its costliest phase.

Peak memory: ``ru_maxrss`` of the subprocess (CPU; it includes the cached data set, the same for every bundle)
and ``torch.cuda.max_memory_allocated`` (CUDA).

    python scripts/bench/bench_methods.py --roi 48 64 --out results/bench/methods.json          # make bench
    python scripts/bench/bench_methods.py --quick                                                  # make bench QUICK=1
    python scripts/bench/bench_methods.py --device cuda --roi 96 112,112,80 --iterations 20      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
REFERENCE = "supervised"


def _parse_roi(text: str) -> list[int]:
    parts = [int(p) for p in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 16:
        raise argparse.ArgumentTypeError(f"roi must be N or X,Y,Z with every size >= 16, got {text!r}")
    return parts


def _roi_name(roi: list[int]) -> str:
    return str(roi[0]) if len(set(roi)) == 1 else "x".join(map(str, roi))


def all_bundles() -> list[str]:
    sys.path.insert(0, str(REPO / "shared"))
    from semiseg.bundle_config import bundle_dirs

    return [d.name for d in bundle_dirs(REPO / "bundles")]


# --------------------------------------------------------------------------------------------------------------------
# worker: one bundle, one size, in its own process
# --------------------------------------------------------------------------------------------------------------------
def same_backbone(owner_parser: Any, owner: str) -> dict:
    """A plain segmentation network with the backbone of ``owner``'s network (its ``network_def``, read from
    ``owner_parser``) and the owner's dropout, for the supervised bundle: URPC's pyramid UNet without its auxiliary
    heads (its ``DeepSupervisionUNet`` definition with one output: every other argument as the owner's), UGPCL's
    network without its transformer decoder and heads (``BasicUNet``, same features)."""
    network_def = owner_parser.get()["network_def"]
    dropout = owner_parser.get_parsed_content("dropout")
    if owner == "urpc":
        # the owner's own network definition with one output, its references to the owner's config resolved
        decoder_dropout = owner_parser.get_parsed_content("decoder_dropout")
        return {**network_def, "num_outputs": 1, "dropout": dropout,
                "decoder_dropout": list(decoder_dropout) if decoder_dropout is not None else None}
    if owner == "ugpcl":
        return {"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": "@in_channels",
                "out_channels": "@num_classes", "features": list(network_def["features"]),
                "act": ["LeakyReLU", {"negative_slope": 0.1, "inplace": True}], "norm": ["instance", {"affine": True}],
                "dropout": dropout}
    raise ValueError(f"no backbone-matched reference for {owner!r}; known: {list(OWN_NETWORK)}")


# terms that start late in a run are switched on from the first iteration, so the timed steps are the costliest
# phase: UGPCL's contrastive loss and queues start at 10% of the run (``contrast_start_fraction``; ``contrast_start``
# 0 puts them on from the second iteration) and may be off in a benchmark's first iterations otherwise
STEADY_STATE = {"ugpcl": {"contrast_start": 0}}
OWN_NETWORK = ("urpc", "ugpcl")  # bundles whose network is part of the method: also timed against their backbone
STUDENT_CROPS = 4  # crops the student sees per iteration in every bundle (2 labelled + 2 unlabelled)


def worker(bundle: str, roi: list[int], data: Path, iterations: int, warmup: int, device: str, out: Path) -> None:
    """Time one bundle (``"supervised@urpc"``: the supervised bundle on urpc's backbone) in this process."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    torch.set_num_threads(max(1, torch.get_num_threads()))
    name, _, owner = bundle.partition("@")
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / "train.json"))
    if owner:
        owner_parser = ConfigParser()
        owner_parser.read_config(str(REPO / "bundles" / owner / "configs" / "train.json"))
        parser["network_def"] = same_backbone(owner_parser, owner)
    total = warmup + iterations
    ckpt = tempfile.mkdtemp(prefix=f"bench_{bundle}_")
    overrides: dict[str, Any] = {
        "dataset_dir": str(data), "roi_size": roi, "num_workers": 0, "cache_rate": 1.0, "ckpt_dir": ckpt,
        "output_dir": ckpt, "overwrite": True, "max_iterations": total, "iterations_per_epoch": total,
        "val_interval": 10**6, "log_every": 10**6, "device": f"$torch.device({device!r})",
        "amp": device.startswith("cuda"),
    }
    config = parser.get()
    has_unlabelled = "unlabelled_batch_size" in config and "unlabelled" in config.get("train", {})
    if not has_unlabelled:  # same number of student samples per iteration as a 2 + 2 semi-supervised bundle
        overrides["batch_size"] = STUDENT_CROPS
    overrides.update(STEADY_STATE.get(bundle, {}))
    parser.update(overrides)
    if has_unlabelled:  # bpl's defaults are 2 + 1: give it the same 4 crops as every other bundle
        labelled = parser.get_parsed_content("batch_size")
        if labelled + parser.get_parsed_content("unlabelled_batch_size") != STUDENT_CROPS:
            parser["unlabelled_batch_size"] = max(1, STUDENT_CROPS - labelled)
    if "initialize" in config:
        parser.get_parsed_content("initialize")  # the bundle's own start-up checks, as `monai.bundle run` does
    trainer = parser.get_parsed_content("train#trainer")

    iteration, fetch_l, fetch_u = [], [], []
    clock = time.perf_counter

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    original_next = trainer._next_unlabelled

    def timed_next():  # the unlabelled fetch happens inside the iteration
        start = clock()
        result = original_next()
        fetch_u.append(clock() - start)
        return result

    trainer._next_unlabelled = timed_next
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: fetch_l.append(-clock()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda e: fetch_l.__setitem__(-1, fetch_l[-1] + clock()))
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: (sync(), iteration.append(-clock())))
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: (sync(), iteration.__setitem__(-1, iteration[-1] + clock())))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    trainer.run()
    if len(iteration) != total:
        raise RuntimeError(f"{bundle}: ran {len(iteration)} iterations, expected {total}")
    if not fetch_u:
        fetch_u = [0.0] * total
    steps = [it - u for it, u in zip(iteration, fetch_u)]
    data_times = [ll + u for ll, u in zip(fetch_l, fetch_u)]
    result = {
        "bundle": bundle, "roi": roi, "iterations": iterations, "warmup": warmup,
        "step_s": steps[warmup:], "data_s": data_times[warmup:],
        "labelled_batch": parser.get_parsed_content("batch_size"),
        "unlabelled_batch": parser.get_parsed_content("unlabelled_batch_size") if has_unlabelled else 0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steady_state_overrides": STEADY_STATE.get(bundle, {}),
    }
    if device.startswith("cuda"):
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out.write_text(json.dumps(result))


# --------------------------------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------------------------------
def _run_worker(bundle: str, roi: list[int], data: Path, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    command = [sys.executable, __file__, "--worker", bundle, "--roi", ",".join(map(str, roi)), "--data", str(data),
               "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--device", args.device,
               "--worker-out", str(out)]
    proc = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(REPO / "shared"), os.environ.get("PYTHONPATH")]))})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"benchmark of {bundle} at roi {roi} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for bundle, rounds in runs.items():
        steps = [t for r in rounds for t in r["step_s"]]
        data_times = [t for r in rounds for t in r["data_s"]]
        table[bundle] = {
            "step_median_s": statistics.median(steps), "data_median_s": statistics.median(data_times),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rounds),
            "labelled_batch": rounds[0]["labelled_batch"], "unlabelled_batch": rounds[0]["unlabelled_batch"],
            "samples": len(steps),
        }
        if "peak_cuda_mb" in rounds[0]:
            table[bundle]["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in rounds)
    if REFERENCE in table:
        ref = table[REFERENCE]
        for name, row in table.items():
            row["step_ratio_to_supervised"] = row["step_median_s"] / ref["step_median_s"]
            key = "peak_cuda_mb" if "peak_cuda_mb" in row else "peak_rss_mb"
            row["memory_ratio_to_supervised"] = row[key] / ref[key]
            backbone = table.get(f"{REFERENCE}@{name}")
            if backbone is not None:  # what the method adds on its own network
                row["step_ratio_to_same_backbone"] = row["step_median_s"] / backbone["step_median_s"]
                row["memory_ratio_to_same_backbone"] = row[key] / backbone[key]
    return table


def markdown(results: dict) -> str:
    lines = []
    for size, table in results["sizes"].items():
        lines += [f"\nroi {size}, {results['device']}:\n",
                  "| bundle | crops (labelled + unlabelled) | step median (s) | x supervised | x same backbone | "
                  "data fetch (s) | peak memory (MB) | x supervised | x same backbone |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for bundle, row in table.items():
            memory = row.get("peak_cuda_mb", row["peak_rss_mb"])
            step_ratio, memory_ratio = row.get("step_ratio_to_supervised", 0), row.get("memory_ratio_to_supervised", 0)
            own_step, own_memory = (f"{row[k]:.2f}" if k in row else "" for k in (
                "step_ratio_to_same_backbone", "memory_ratio_to_same_backbone"))
            lines.append(f"| {bundle} | {row['labelled_batch']} + {row['unlabelled_batch']} | "
                         f"{row['step_median_s']:.3f} | {step_ratio:.2f} | {own_step} | {row['data_median_s']:.3f} | "
                         f"{memory:.0f} | {memory_ratio:.2f} | {own_memory} |")
    return "\n".join(lines)


def _write(path: Path, results: dict) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**results, "torch": torch.__version__}, indent=2))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="*", help="bundles to measure (default: all; supervised is always added)")
    parser.add_argument("--roi", nargs="*", type=_parse_roi, default=None, help="patch sizes (default 48 64)")
    parser.add_argument("--iterations", type=int, default=8, help="timed iterations per bundle and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="48^3, 4 iterations, 1 round (a few minutes on CPU)")
    parser.add_argument("--data-root", type=Path, default=REPO / "results" / "bench" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "methods.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.roi[0], args.data, args.iterations, args.warmup, args.device, args.worker_out)
        return
    if args.quick:
        args.roi, args.iterations, args.rounds, args.warmup = [[48, 48, 48]], 4, 1, 1
    rois = args.roi or [[48] * 3, [64] * 3]
    bundles = args.bundles or all_bundles()
    unknown = sorted(set(bundles) - set(all_bundles()))
    if unknown:
        parser.error(f"unknown bundle(s) {unknown}; bundles here: {all_bundles()}")
    if REFERENCE not in bundles:
        bundles = [REFERENCE, *bundles]
    bundles += [f"{REFERENCE}@{b}" for b in OWN_NETWORK if b in bundles]

    sys.path.insert(0, str(REPO / "shared"))
    from semiseg.data.demo import make_demo_dataset

    started = time.time()
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
        "device": args.device, "machine": platform.machine(), "python": platform.python_version(),
        "iterations": args.iterations, "warmup": args.warmup, "rounds": args.rounds, "sizes": {},
    }
    for roi in rois:
        shape = [max(64, s + 16) for s in roi]  # volumes larger than the crop, so crops vary
        data = args.data_root / "x".join(map(str, shape))
        make_demo_dataset(data, num_train=12, num_test=1, shape=shape)
        runs: dict[str, list[dict]] = {b: [] for b in bundles}
        for r in range(args.rounds):
            order = bundles[r % len(bundles):] + bundles[: r % len(bundles)]
            for bundle in order:
                print(f"[{time.time() - started:6.0f}s] roi {_roi_name(roi)} round {r + 1}/{args.rounds}: {bundle}",
                      flush=True)
                runs[bundle].append(_run_worker(bundle, roi, data, args))
                # written after every bundle, so a run stopped part-way (a time limit) keeps what it measured
                results["sizes"][_roi_name(roi)] = summarise({b: r for b, r in runs.items() if r})
                _write(args.out, {**results, "partial": True, "wall_s": time.time() - started})
    results["wall_s"] = time.time() - started
    _write(args.out, results)
    print(markdown(results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
