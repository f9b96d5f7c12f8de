"""Calibrate the demo data: supervised training with the labelled budget vs with all labels (and, optionally, Mean
Teacher with the budget), over several seeds, through the bundles themselves.

The demo must leave the budget run clearly worse than the all-labels run (>= 5 mean-Dice points,
`docs/architecture.md` §4), so that semi-supervision has something to win.
Every run is ``python -m monai.bundle run training``
followed by the evaluate workflow, with the bundles' own defaults except the overrides below; two runs go side by
side (one thread each) on a 2-core machine.

    python scripts/calibrate_demo.py --budget 2 --iterations 1500 --seeds 0 1 --mean-teacher \
        --out results/calibration
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "shared"))

from semiseg.bundle import run_bundle  # noqa: E402
from semiseg.data.demo import make_demo_dataset  # noqa: E402
from semiseg.reporting import read_metric_csvs  # noqa: E402

CLASSES = ("organ", "lesion")


def one_run(bundle: str, num_labelled: int, seed: int, args: argparse.Namespace) -> dict:
    out = args.out / f"{bundle}_k{num_labelled}_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    common = {"dataset_dir": args.data, "output_dir": out, "ckpt_dir": out / "models", "seed": seed,
              "num_labelled": num_labelled, "num_val": 0, "num_workers": 0}  # no validation: k may be every case
    train = {**common, "max_iterations": args.iterations, "val_interval": 10**6, "log_every": 500,
             "overwrite": True}  # a rerun replaces its own models/model.pt
    start = time.time()
    run_bundle(bundle, "training", overrides=train, log_file=out / "train.log")
    run_bundle(bundle, None, ["train.json", "evaluate.json"], common, log_file=out / "evaluate.log")
    metrics = read_metric_csvs(out, CLASSES)["mean"]
    result = {"bundle": bundle, "num_labelled": num_labelled, "seed": seed, "dice": metrics["dice"],
              "hd95": metrics["hd95"], "asd": metrics["asd"], "wall_s": round(time.time() - start, 1)}
    print(f"{bundle:13s} k={num_labelled:2d} seed={seed}: dice {100 * metrics['dice']['mean']:.1f} "
          f"(organ {100 * metrics['dice']['organ']:.1f}, lesion {100 * metrics['dice']['lesion']:.1f}) "
          f"in {result['wall_s']:.0f} s", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=2, help="labelled budget k")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--mean-teacher", action="store_true", help="also run mean_teacher with the budget")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "calibration")
    args = parser.parse_args()

    dataset = json.loads(make_demo_dataset(args.data).read_text())
    num_train = len(dataset["training"])
    jobs = [("supervised", k, s) for s in args.seeds for k in (args.budget, num_train)]
    if args.mean_teacher:
        jobs += [("mean_teacher", args.budget, s) for s in args.seeds]
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        runs = list(pool.map(lambda job: one_run(*job, args), jobs))

    def dice(bundle: str, k: int) -> list[float]:
        return [100 * r["dice"]["mean"] for r in runs if r["bundle"] == bundle and r["num_labelled"] == k]

    budget, full = dice("supervised", args.budget), dice("supervised", num_train)
    gaps = [f - b for f, b in zip(full, budget)]
    summary = {
        "command": " ".join(sys.argv),
        "generator": dataset.get("generator"),
        "budget": args.budget, "num_train": num_train, "iterations": args.iterations, "seeds": args.seeds,
        "runs": runs,
        "supervised_budget_dice": budget, "supervised_all_dice": full,
        "gap_points": gaps, "gap_min": min(gaps), "meets_5_point_gap": min(gaps) >= 5.0,
    }
    if args.mean_teacher:
        mt = dice("mean_teacher", args.budget)
        summary["mean_teacher_budget_dice"] = mt
        summary["mean_teacher_gain_points"] = [m - b for m, b in zip(mt, budget)]
        summary["mean_teacher_gain_mean"] = statistics.mean(summary["mean_teacher_gain_points"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "calibration.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
