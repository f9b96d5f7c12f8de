"""Does the unlabelled loader keep up as the unlabelled set grows? 20, 200, 2000 unlabelled cases on disk.

For each size a data set is written (4 labelled demo cases plus N distinct unlabelled volumes listed under
``dataset.json``'s ``unlabeled``), and a fresh subprocess builds a bundle's unlabelled loader from its own
``train.json`` (``train#unlabelled#dataloader``: the data-list checks, the ``CacheDataset`` that caches at most
``unlabelled_cache_num`` cases and streams the rest from disk) and then draws ``--batches`` batches from it.
Reported per size: start-up (data list, file checks, caching), the median and 90th percentile time per batch, and
the subprocess's peak RSS. A loader that does not slow down shows a flat per-batch time and a flat RSS; start-up
grows with N (every file's header and content hash are checked once, so two lists never share a case).

    python scripts/bench/bench_loader.py --sizes 20 200 2000 --out results/bench/loader.json      # part of make bench
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

REPO = Path(__file__).resolve().parents[2]


def write_dataset(root: Path, num_unlabelled: int, shape: tuple[int, int, int]) -> Path:
    """4 labelled demo cases + ``num_unlabelled`` distinct unlabelled volumes (a demo image with a per-case offset
    and noise, so no two share content); reuses a complete folder."""
    import nibabel as nib
    import numpy as np

    sys.path.insert(0, str(REPO / "shared"))
    from semiseg.data.demo import make_demo_dataset

    spec_path = root / "dataset.json"
    if spec_path.is_file() and len(json.loads(spec_path.read_text()).get("unlabeled", [])) == num_unlabelled:
        return root
    base = json.loads(make_demo_dataset(root / "demo", num_train=6, num_test=1, shape=shape).read_text())
    training = [{k: f"demo/{v}" for k, v in case.items()} for case in base["training"]]
    template = nib.load(root / "demo" / base["training"][0]["image"])
    image = np.asarray(template.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    (root / "unlabelled").mkdir(parents=True, exist_ok=True)
    unlabelled = []
    for i in range(num_unlabelled):
        name = f"unlabelled/u_{i:05d}.nii.gz"
        volume = (image * rng.uniform(0.8, 1.2) + rng.normal(0, 0.02, image.shape)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, template.affine), root / name)
        unlabelled.append({"image": name})
    spec = {"name": f"loader bench, {num_unlabelled} unlabelled", "labels": base["labels"],
            "modality": base.get("modality", {"0": "MRI"}), "training": training, "test": [], "unlabeled": unlabelled}
    spec_path.write_text(json.dumps(spec, indent=1))
    return root


def worker(bundle: str, data: Path, batches: int, num_workers: int, out: Path) -> None:
    from monai.bundle import ConfigParser

    start = time.perf_counter()
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"dataset_dir": str(data), "num_labelled": 2, "num_val": 2, "num_workers": num_workers})
    loader = parser.get_parsed_content("train#unlabelled#dataloader")
    startup = time.perf_counter() - start
    times, drawn = [], 0
    while drawn < batches:
        iterator = iter(loader)
        while drawn < batches:
            t0 = time.perf_counter()
            try:
                next(iterator)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
            drawn += 1
    steady = times[min(len(times) - 1, 2 + num_workers):]  # after the workers' start-up
    dataset = loader.dataset
    result = {
        "unlabelled_cases": len(dataset), "cached_cases": getattr(dataset, "cache_num", None),
        "startup_s": startup, "batch_median_s": statistics.median(steady),
        "batch_p90_s": sorted(steady)[int(0.9 * (len(steady) - 1))], "batches": len(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="*", type=int, default=[20, 200, 2000])
    parser.add_argument("--bundle", default="mean_teacher")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--shape", type=int, default=48, help="volume edge (cubic; >= the bundle's roi_size, 48)")
    parser.add_argument("--data-root", type=Path, default=REPO / "results" / "bench" / "loader")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "loader.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.batches, args.num_workers, args.worker_out)
        return
    results = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
               "machine": platform.machine(), "cpus": os.cpu_count(), "bundle": args.bundle, "sizes": {}}
    for size in args.sizes:
        t0 = time.perf_counter()
        data = write_dataset(args.data_root / f"n{size}", size, (args.shape,) * 3)
        print(f"n={size}: data set ready in {time.perf_counter() - t0:.0f}s", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", args.bundle, "--data", str(data), "--batches", str(args.batches),
             "--num-workers", str(args.num_workers), "--worker-out", str(out)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "shared")},
        )
        if proc.returncode != 0:
            raise SystemExit(f"loader benchmark at n={size} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results["sizes"][str(size)] = json.loads(out.read_text())
        out.unlink()
        print(f"n={size}: {results['sizes'][str(size)]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
