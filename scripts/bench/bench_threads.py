"""The demo's supervised run with and without one busy process beside it: torch's default threads vs ``num_threads``.

Runs the command ``make demo`` runs for the supervised bundle (``python -m monai.bundle run training`` with
``scripts/run_demo.py``'s overrides, ``--max_iterations`` shortened) under four conditions, interleaved in rounds so
that the machine's drift hits all of them:

- ``before``: ``--num_threads`` set to torch's default (one thread per core), what every run used before the
  setting existed;
- ``after``: the template's default (``num_threads`` null: one thread per core left free at start,
  :mod:`semiseg.threads`);

each ``alone`` and ``busy`` (one single-threaded busy loop, ``python -c "while True: pass"``, started before the run
and stopped after it). Reports per condition the command's wall time (start-up and caching included), the seconds
per training iteration between the first and the last iteration log line (``--log_every 10``), Ignite's "Time
taken" of the training epoch (with the demo's validation at its end), the thread count each run chose and the
machine's load before each run; the JSON is rewritten after every run and each run's log kept under ``--work``.

    python scripts/bench/bench_threads.py --iterations 30 --rounds 2 --out results/bench/threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "shared"))

from semiseg.bundle import bundle_command  # noqa: E402
from semiseg.data.demo import make_demo_dataset  # noqa: E402
from semiseg.threads import busy_cores, usable_cores  # noqa: E402

EPOCH_TIME = re.compile(r"SemiSupervisedTrainer - INFO - Epoch\[1\] Complete\. Time taken: (\d+):(\d+):([\d.]+)")
ITERATION_LOG = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*Iter: (\d+)/\d+ --", re.MULTILINE)
CHOSEN = re.compile(r"semiseg: torch uses (\d+) CPU thread")


def run_once(variant: str, busy: bool, args: argparse.Namespace, out: Path) -> dict:
    """One demo supervised run; returns its timings."""
    overrides = {"dataset_dir": args.data, "output_dir": out, "ckpt_dir": out / "models", "seed": 0,
                 "num_labelled": 2, "max_iterations": args.iterations, "iterations_per_epoch": 100,
                 "val_interval": max(1, args.iterations // 100 // 3), "log_every": 10, "overwrite": True}
    if variant == "before":
        overrides["num_threads"] = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "shared"), os.environ.get("PYTHONPATH")]))
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(1.0 if busy else 0.0)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        proc = subprocess.run(bundle_command("supervised", "training", overrides=overrides), cwd=REPO, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    log = proc.stdout + proc.stderr
    out.mkdir(parents=True, exist_ok=True)
    (out / f"run_{time.strftime('%H%M%S')}.log").write_text(log)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant}/{'busy' if busy else 'alone'} failed:\n" + "\n".join(log.splitlines()[-20:]))
    epoch = EPOCH_TIME.search(log)
    chosen = CHOSEN.search(log)
    logged = [(datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp(), int(i)) for t, i in ITERATION_LOG.findall(log)]
    per_iteration = None
    if len(logged) >= 2:
        (t0, i0), (t1, i1) = logged[0], logged[-1]
        per_iteration = (t1 - t0) / (i1 - i0)
    return {"wall_s": wall, "s_per_iteration": per_iteration,
            "train_epoch_s": int(epoch[1]) * 3600 + int(epoch[2]) * 60 + float(epoch[3]) if epoch else None,
            "threads": int(chosen[1]) if chosen else None, "load_1min_before": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench" / "threads_runs")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "threads.json")
    args = parser.parse_args()
    make_demo_dataset(args.data)
    conditions = [("before", False), ("before", True), ("after", False), ("after", True)]
    runs: dict[str, list[dict]] = {f"{v}_{'busy' if b else 'alone'}": [] for v, b in conditions}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
              "cores": usable_cores(), "iterations": args.iterations, "runs": runs}
    for r in range(args.rounds):
        order = conditions[r % 4:] + conditions[: r % 4]
        for variant, busy in order:
            name = f"{variant}_{'busy' if busy else 'alone'}"
            print(f"round {r + 1}/{args.rounds}: {name} (busy cores now {busy_cores() or 0:.1f})", flush=True)
            runs[name].append(run_once(variant, busy, args, args.work / name))
            summary = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "s_per_iteration", "train_epoch_s")
                           if all(x[m] is not None for x in v)} for k, v in runs.items() if v}
            result["median"] = summary
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2))


if __name__ == "__main__":
    main()
