"""The `make demo` job: train the supervised and Mean Teacher bundles on the demo phantom with the same labelled
budget, evaluate both on the held-out test cases with sliding-window inference, print a table and write
results/demo/summary.json and results/demo/demo.png.

Every step runs the bundles exactly as a user would (``python -m monai.bundle run ...``), so the demo also checks
the commands in the bundles' READMEs. Output streams to the console while it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import nibabel as nib

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "shared"))

from semiseg.bundle import bundle_command, run_bundle  # noqa: E402
from semiseg.data.demo import SCENARIOS, make_scenario  # noqa: E402
from semiseg.reporting import format_table, read_metric_csvs, save_overlay_png  # noqa: E402

METHODS = ("supervised", "mean_teacher")
CLASSES = ("organ", "lesion")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1500, help="training iterations per method")
    parser.add_argument("--num-labelled", type=int, default=2, help="labelled budget (first k training cases)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", choices=SCENARIOS, default="default",
                        help="the demo scenario (docs/data.md): two_site labels site A and tests on site B")
    parser.add_argument("--out", type=Path, default=None, help="default results/demo (results/demo_<scenario>)")
    parser.add_argument("--data", type=Path, default=None, help="default data/demo (data/demo_<scenario>)")
    args = parser.parse_args()
    suffix = "" if args.scenario == "default" else f"_{args.scenario}"
    args.out = args.out or REPO / "results" / f"demo{suffix}"
    args.data = args.data or REPO / "data" / f"demo{suffix}"

    start = time.time()
    print(f"=== demo data ({args.scenario} scenario): {args.data}", flush=True)
    dataset_json = make_scenario(args.scenario, args.data)
    results, timings = {}, {}
    for method in METHODS:
        out = args.out / method
        common = {"dataset_dir": args.data, "output_dir": out, "ckpt_dir": out / "models", "seed": args.seed,
                  "num_labelled": args.num_labelled}
        train = {**common, "max_iterations": args.iterations, "iterations_per_epoch": 100,
                 "val_interval": max(1, args.iterations // 100 // 3), "log_every": 100,
                 "overwrite": True}  # a demo rerun replaces its own models/model.pt
        command = " ".join(bundle_command(method, "training", overrides=train)[1:])
        print(f"\n=== {method}: training, {args.iterations} iterations\n{command}", flush=True)
        timings[f"{method}_train_s"] = run_bundle(method, "training", overrides=train)
        print(f"\n=== {method}: evaluate on the test cases", flush=True)
        timings[f"{method}_evaluate_s"] = run_bundle(method, None, ["train.json", "evaluate.json"], common)
        results[method] = read_metric_csvs(out, CLASSES)

    table = format_table(results)
    print("\n" + table, flush=True)

    test_cases = json.loads(dataset_json.read_text())["test"]
    case = test_cases[0]
    image = nib.load(args.data / case["image"]).get_fdata()
    label = nib.load(args.data / case["label"]).get_fdata()
    name = Path(case["image"]).name.split(".")[0]
    preds = {m: nib.load(args.out / m / f"{name}_seg.nii.gz").get_fdata() for m in METHODS}
    png = save_overlay_png(args.out / "demo.png", image, label, preds,
                           title=f"{name}: {args.num_labelled} labelled cases, {args.iterations} iterations")

    summary = {
        "scenario": args.scenario,
        "num_labelled": args.num_labelled,
        "iterations": args.iterations,
        "seed": args.seed,
        "classes": list(CLASSES),
        "metrics": {m: r["mean"] for m, r in results.items()},
        "cases": {m: r["cases"] for m, r in results.items()},
        "misses": {m: r["misses"] for m, r in results.items()},
        "units": {m: r["units"] for m, r in results.items()},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "total_s": round(time.time() - start, 1),
        "table": table,
        "figure": str(png.relative_to(REPO) if png.is_relative_to(REPO) else png),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nwrote {args.out / 'summary.json'} and {png}; total {summary['total_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
