"""Compare bundles on the demo data over several seeds, the way a user runs them, and write the results table.

Every run is ``python -m monai.bundle run training`` followed by the evaluate workflow (student ``model.pt``; for
bundles with an EMA teacher, ``teacher.pt``; for CPS the second student and the mean of both), with the bundles' own
defaults except the overrides below, so the supervised baseline and the semi-supervised runs share network, crops
and augmentations. A variant is a bundle plus optional config overlays merged after ``train.json``
(``mean_teacher+strong_views`` merges ``configs/strong_views.json``). Runs go side by side, one thread each.

    python scripts/compare_methods.py --seeds 0 1 2 --iterations 1500 \
        --variants supervised mean_teacher mean_teacher+strong_views --out results/compare

Writes ``<out>/compare.json`` (every run, every metric, wall times) and ``<out>/results.md`` (mean +- standard
deviation over seeds, and every seed), which ``docs/results.md`` quotes with the command. Each run's
``run.json`` records the overrides it was given, the settings it ran with (every top-level tunable and component of
the merged configs: network, method, recipe) and the git commit; ``--resume`` reuses a finished run only when its
recorded settings equal the ones this command would give it, and otherwise stops naming the settings that differ.

``--eval-set ID=VALUE ...`` also evaluates each run's student with those evaluate overrides (e.g.
``overlap=0.5 blend_mode=constant``), as a role of its own (``student[overlap=0.5,blend_mode=constant]``), so
evaluation settings are compared on the same weights.

Figures (``scripts/compare_figures.py``: Dice per method and seed with the supervised baseline, paired differences,
cost per iteration against gain; each PNG with its plotted values as JSON), a step of its own that trains nothing:

    # from finished runs, several --out folders combined; LABEL=DIR names the one variant of a control's folder
    python scripts/compare_methods.py --figures-from results/compare results/compare_new \
        supervised@ugpcl=results/compare_ugpcl_backbone --figures-out results/figures
    # the committed figures, again, from the committed numbers
    python scripts/compare_methods.py --figures-from docs/figures/results.json

From folders it writes ``results.json`` (every variant's per-seed Dice and paired differences) beside the figures;
from a ``results.json`` it redraws that file's figures in its folder. The cost is the benchmark's time per iteration
relative to ``supervised`` (``--figure-cost``: docs/figures/cost_per_iteration.json, the CPU table of
docs/benchmarks.md, or a ``scripts/bench/bench_methods.py`` JSON), never wall times.
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "shared"))

from monai.bundle import ConfigParser  # noqa: E402

sys.path.insert(0, str(REPO / "scripts"))
import compare_figures  # noqa: E402

from semiseg.bundle import run_bundle  # noqa: E402
from semiseg.data.demo import SCENARIOS, make_scenario  # noqa: E402
from semiseg.reporting import read_metric_csvs  # noqa: E402
from semiseg.reporting_qc import spearman  # noqa: E402

CLASSES = ("organ", "lesion")
DEMO = REPO / "data" / "demo"
SCENARIO_DATA = {"default": DEMO, "two_site": REPO / "data" / "demo_two_site"}
"""Each demo scenario's data folder (``scripts/make_demo_data.py --scenario``), generated when missing."""
FIGURES_DIR = REPO / "docs" / "figures"  # the committed figures, their results.json and cost table
RUN_FILE = "run.json"  # one finished run's metrics and wall times, in its folder
BINARY_CLASSES = ("foreground",)
# The demo as a binary task (foreground = organ including its lesions): what the bpl bundle trains by default, and
# what --binary asks of every other bundle (their usual softmax, over two classes).
BINARY_OVERRIDES = {"binarise_label": "true", "num_classes": 2, "class_names": ["background", "foreground"]}
# What is evaluated after training: role -> (weights file in models/, other files it needs, evaluate overrides).
# Each role whose files a run wrote: the student; an EMA teacher; CPS's second student and the mean of both.
ROLES = {
    "student": ("model.pt", (), {}),
    "teacher": ("teacher.pt", (), {}),
    "student_2": ("model_2.pt", (), {}),
    "students_mean": ("model.pt", ("model_2.pt",), {"ensemble_students": "true"}),
}


# Top-level ids that are paths, structure or run plumbing, not settings that change what a run learns.
NOT_SETTINGS = frozenset({
    "_generated_", "_meta_", "imports", "bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "device", "amp",
    "is_main_process", "resume", "overwrite", "progress", "log_every", "num_workers", "initialize", "run", "training",
    "train", "validate", "checkpoint", "finalize", "ckpt_guard",
})


def _literal(value: object) -> object:
    """An override's value as the command line hands it to MONAI (Python Fire parses literals)."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value


def run_settings(variant: str, overrides: dict) -> dict:
    """What one run of ``variant`` is trained with: the merged configs' top-level settings and components (every
    id but paths, plumbing and ``$`` expressions), with ``overrides`` applied, as JSON-comparable values."""
    bundle, configs = _configs(variant)
    parser = ConfigParser()
    parser.read_config([str(REPO / "bundles" / bundle / "configs" / c) for c in configs])
    config = parser.get()
    for key, value in overrides.items():
        config[str(key)] = _literal(str(value) if isinstance(value, Path) else value)
    settings = {key: value for key, value in config.items()
                if key not in NOT_SETTINGS and not (isinstance(value, str) and value.startswith("$"))}
    return json.loads(json.dumps(settings, default=str))


def git_commit() -> str:
    """The repository's commit, with ``+dirty`` when tracked files have uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _configs(variant: str) -> tuple[str, list[str]]:
    bundle, *extras = variant.split("+")
    return bundle, ["train.json", *(f"{extra}.json" for extra in extras)]


def _classes(args: argparse.Namespace) -> tuple[str, ...]:
    return BINARY_CLASSES if args.binary else CLASSES


def run_dir(variant: str, seed: int, args: argparse.Namespace) -> Path:
    """One run's folder: ``<out>/<variant>_seed<k>``, with the scenario's name before the seed unless default."""
    scenario = getattr(args, "scenario", "default")
    return args.out / (f"{variant}_seed{seed}" if scenario == "default" else f"{variant}_{scenario}_seed{seed}")


def _common(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """The overrides every workflow of one run gets: data, checkpoint folder, seed, budget, ``--binary``, ``--set``."""
    out = run_dir(variant, seed, args)
    common = {"dataset_dir": args.data, "ckpt_dir": out / "models", "seed": seed, "num_labelled": args.budget,
              "num_workers": 0, **(BINARY_OVERRIDES if args.binary else {})}
    common.update(kv.split("=", 1) for kv in args.set)
    return common


def roles(args: argparse.Namespace) -> dict[str, tuple[str, tuple[str, ...], dict]]:
    """``ROLES``, plus the student evaluated with ``--eval-set`` overrides when given."""
    extra = dict(kv.split("=", 1) for kv in getattr(args, "eval_set", None) or [])
    if not extra:
        return ROLES
    name = "student[" + ",".join(f"{k}={v}" for k, v in extra.items()) + "]"
    return {**ROLES, name: ("model.pt", (), extra)}


def _role_dir(role: str) -> str:
    return "eval_" + "".join(c if c.isalnum() or c in "._-" else "_" for c in role).strip("_")


def evaluate_roles(result: dict, variant: str, seed: int, args: argparse.Namespace) -> bool:
    """Evaluate every role (:func:`roles`) whose weights the run wrote and ``result`` lacks; True if any was added."""
    bundle, configs = _configs(variant)
    out = run_dir(variant, seed, args)
    models = out / "models"
    added = False
    for role, (weights, needs, overrides) in roles(args).items():
        if role in result or not all((models / name).is_file() for name in (weights, *needs)):
            continue
        eval_dir = out / _role_dir(role)
        run_bundle(bundle, None, [*configs, "evaluate.json"],
                   {**_common(variant, seed, args), "output_dir": eval_dir, "model_file": models / weights,
                    **overrides}, log_file=out / f"{_role_dir(role).replace('eval_', 'evaluate_', 1)}.log")
        result[role] = _metrics(eval_dir, args)
        added = True
    return added


def one_run(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one variant with one seed, evaluate every role its weights allow (``ROLES``), return the metrics."""
    bundle, configs = _configs(variant)
    out = run_dir(variant, seed, args)
    out.mkdir(parents=True, exist_ok=True)
    common = _common(variant, seed, args)
    train = {**common, "output_dir": out / "train", "max_iterations": args.iterations, "log_every": 500,
             "overwrite": "true"}
    start = time.time()
    run_bundle(bundle, "training", configs, train, log_file=out / "train.log")
    train_s = time.time() - start
    result: dict = {"variant": variant, "seed": seed, "train_s": round(train_s, 1), **_provenance(variant, seed, args)}
    evaluate_roles(result, variant, seed, args)
    result["wall_s"] = round(time.time() - start, 1)
    (out / RUN_FILE).write_text(json.dumps(result, indent=2))
    dice = result["student"]["dice"]
    per_class = ", ".join(f"{c} {100 * dice[c]:.1f}" for c in _classes(args))
    print(f"{variant:28s} seed={seed}: student dice {100 * dice['mean']:.1f} ({per_class})"
          + (f", teacher {100 * result['teacher']['dice']['mean']:.1f}" if "teacher" in result else "")
          + f" in {result['wall_s']:.0f} s", flush=True)
    return result


def _train_overrides(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """The overrides that decide what a run learns (``_common`` and the budget; not its folders)."""
    common = _common(variant, seed, args)
    return {k: str(v) for k, v in {**common, "max_iterations": args.iterations}.items()
            if k not in ("dataset_dir", "ckpt_dir")}


def _provenance(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """What ``run.json`` records of how a run was made: its overrides, its settings, the data and the commit."""
    overrides = _train_overrides(variant, seed, args)
    return {"overrides": overrides, "settings": run_settings(variant, overrides), "data": str(args.data),
            "scenario": args.scenario, "commit": git_commit()}


def settings_mismatch(recorded: dict, variant: str, seed: int, args: argparse.Namespace) -> list[str]:
    """The settings (and data folder) a finished run's ``run.json`` differs in from what this command would run;
    ``["settings"]`` for a run that recorded none (made before runs recorded them)."""
    if "settings" not in recorded:
        return ["settings (this run recorded none)"]
    current = _provenance(variant, seed, args)
    keys = sorted(set(recorded["settings"]) | set(current["settings"]))
    differ = [f"{k}: {recorded['settings'].get(k, '<absent>')!r} then, {current['settings'].get(k, '<absent>')!r} now"
              for k in keys if recorded["settings"].get(k) != current["settings"].get(k)]
    for key in ("data", "scenario"):
        if recorded.get(key, "default" if key == "scenario" else None) != current[key]:
            differ.append(f"{key}: {recorded.get(key)!r} then, {current[key]!r} now")
    return differ


def qc_spearman(report: Path, classes: tuple[str, ...]) -> dict:
    """The Spearman correlations of a QC report (``qc_report.csv``): ``qc_spearman`` (the case AULA against the mean
    Dice) and, where the report has the per-class columns, ``qc_spearman_per_class`` (``aula_<c>`` against
    ``dice_<c>``, the Layer Ensembles reference's). Empty cells (undefined values) count as NaN."""
    with open(report, newline="") as f:
        rows = list(csv.DictReader(f))

    def column(name: str) -> list[float]:
        return [float(r[name]) if r[name] else float("nan") for r in rows]

    out: dict = {"qc_spearman": spearman(column("aula"), column("dice"))}
    if rows and all(f"aula_{c}" in rows[0] and f"dice_{c}" in rows[0] for c in classes):
        out["qc_spearman_per_class"] = {c: spearman(column(f"aula_{c}"), column(f"dice_{c}")) for c in classes}
    return out


def _metrics(eval_dir: Path, args: argparse.Namespace) -> dict:
    """Mean metrics of one evaluation, plus the AULA-Dice Spearman correlations where it wrote a QC report."""
    metrics = read_metric_csvs(eval_dir, _classes(args))["mean"]
    qc = eval_dir / "qc_report.csv"
    if qc.is_file():
        metrics.update(qc_spearman(qc, _classes(args)))
    return metrics


def collect(variant: str, seed: int, args: argparse.Namespace) -> dict | None:
    """A finished run from its output folder (``--summarize-only``, ``--resume``), or None if it did not finish.

    A run this script finished has ``run.json`` (with its wall times); an older one is read from its evaluation
    CSVs, without the times."""
    out = run_dir(variant, seed, args)
    if (out / RUN_FILE).is_file():
        return json.loads((out / RUN_FILE).read_text())
    result: dict = {"variant": variant, "seed": seed, "train_s": float("nan")}
    for role in roles(args):
        if (out / _role_dir(role) / "dice_raw.csv").is_file():
            result[role] = _metrics(out / _role_dir(role), args)
    return result if "student" in result else None


def run_or_reuse(variant: str, seed: int, args: argparse.Namespace) -> dict:
    """``one_run``, unless ``--resume`` and the run already finished under ``--out``."""
    done = run_dir(variant, seed, args) / RUN_FILE
    if args.resume and done.is_file():
        result = json.loads(done.read_text())
        differ = settings_mismatch(result, variant, seed, args)
        if differ:
            raise SystemExit(
                f"--resume: {done} was made with other settings than this command gives it; move it away or use "
                f"another --out (nothing reused). Differences: " + "; ".join(differ))
        if evaluate_roles(result, variant, seed, args):  # weights a role needs, written before the role existed
            done.write_text(json.dumps(result, indent=2))
        print(f"{variant:28s} seed={seed}: finished before, reused", flush=True)
        return result
    return one_run(variant, seed, args)


def _mean_sd(values: list[float], digits: int = 1) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def table(runs: list[dict], variants: list[str], classes: tuple[str, ...] = CLASSES,
          all_roles: dict | None = None) -> str:
    """Markdown: mean ± sd over seeds per variant and role, then every run."""
    all_roles = ROLES if all_roles is None else all_roles
    lines = ["| variant | weights | seeds | " + " | ".join(f"Dice {c}" for c in classes)
             + " | Dice mean | HD95 mean (mm) | ASD mean (mm) |", "|---|---|---|" + "---|" * (len(classes) + 3)]
    for variant in variants:
        for role in all_roles:
            rows = [r[role] for r in runs if r["variant"] == variant and role in r]
            if not rows:
                continue
            cells = [_mean_sd([100 * m["dice"][c] for m in rows]) for c in (*classes, "mean")]
            cells += [_mean_sd([m[k]["mean"] for m in rows]) for k in ("hd95", "asd")]
            lines.append(f"| {variant} | {role} | {len(rows)} | " + " | ".join(cells) + " |")
    shown = [role for role in all_roles if role == "student" or any(role in r for r in runs)]
    lines += ["", "| variant | seed | " + " | ".join(f"{role} Dice mean" for role in shown) + " | train wall (s) |",
              "|---|---|" + "---|" * (len(shown) + 1)]
    for r in runs:
        cells = [f"{100 * r[role]['dice']['mean']:.1f}" if role in r else "-" for role in shown]
        wall = "-" if r["train_s"] != r["train_s"] else f"{r['train_s']:.0f}"  # NaN: not recorded
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) + f" | {wall} |")
    qc = [(r["variant"], role, r["seed"], r[role]["qc_spearman"]) for r in runs for role in all_roles
          if role in r and "qc_spearman" in r[role]]
    if qc:
        lines += ["", "| variant | weights | Spearman(AULA, Dice) per seed | mean ± sd | "
                  + " | ".join(f"Spearman(AULA {c}, Dice {c})" for c in classes) + " |",
                  "|---|---|---|---|" + "---|" * len(classes)]
        for variant, role in dict.fromkeys((v, ro) for v, ro, _, _ in qc):
            rhos = [(seed, rho) for v, ro, seed, rho in qc if (v, ro) == (variant, role)]
            per_seed = ", ".join(f"{seed}: {rho:.2f}" for seed, rho in rhos)
            per_class = [[r[role]["qc_spearman_per_class"][c] for r in runs if r["variant"] == variant and role in r
                          and c in r[role].get("qc_spearman_per_class", {})] for c in classes]
            cells = [_mean_sd(values, digits=2) if values else "-" for values in per_class]
            lines.append(f"| {variant} | {role} | {per_seed} | {_mean_sd([rho for _, rho in rhos], digits=2)} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figures(sources: list[str], out: Path | None, cost_file: Path, roles_: list[str]) -> list[Path]:
    """The ``--figures-from`` step: results.json from finished run folders (or a results.json as it is), then the
    figures (:func:`compare_figures.write_figures`).

    Args:
        sources: run folders (``--out`` of earlier commands, ``LABEL=DIR`` to name a folder's one variant), or one
            ``results.json``.
        out: where the figures go (default: the results.json's folder, else ``<first folder>/figures``).
        cost_file: the cost table (:func:`compare_figures.read_cost`).
        roles_: the weights plotted per variant.

    Returns:
        The PNG paths.

    Raises:
        ValueError: for a results.json given with other sources, or a source that does not exist.
    """
    files = [s for s in sources if s.endswith(".json")]
    if files:
        if len(sources) != 1:
            raise ValueError(f"--figures-from takes one results.json alone or run folders, got {sources}")
        results_file = Path(files[0])
        results = json.loads(results_file.read_text())
        out = out or results_file.parent
    else:
        pairs: list[tuple[str | None, Path]] = []
        for source in sources:
            label, _, folder = source.rpartition("=") if "=" in source else (None, "", source)
            if not Path(folder).is_dir():
                raise ValueError(f"--figures-from {source}: no such folder")
            pairs.append((label or None, Path(folder)))
        command = " ".join(["python", "scripts/compare_methods.py", *sys.argv[1:]])
        results = compare_figures.results_from_runs(pairs, roles_, command=command)
        out = out or pairs[0][1] / "figures"
        out.mkdir(parents=True, exist_ok=True)
        results_file = out / compare_figures.RESULTS_FILE
        results_file.write_text(json.dumps(results, indent=1) + "\n")
    cost = compare_figures.read_cost(cost_file)
    drawn_from = results_file.name if results_file.parent.resolve() == Path(out).resolve() else str(results_file)
    return compare_figures.write_figures(results, cost, Path(out), drawn_from=drawn_from)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["supervised", "mean_teacher"],
                        help="bundle[+overlay...], e.g. mean_teacher+strong_views")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=2, help="labelled budget (first k training cases)")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--set", nargs="*", default=[], metavar="ID=VALUE", help="extra overrides for every run")
    parser.add_argument("--eval-set", nargs="*", default=[], metavar="ID=VALUE",
                        help="also evaluate each run's student with these evaluate overrides (its own role)")
    parser.add_argument("--scenario", choices=SCENARIOS, default="default",
                        help="demo scenario (docs/data.md): its data folder is the default --data, generated if"
                             " missing; its name is part of every run's folder and run.json")
    parser.add_argument("--data", type=Path, default=None,
                        help="data set folder (any layout the bundles read); default: the scenario's demo folder")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "compare")
    parser.add_argument("--binary", action="store_true",
                        help="the demo as a binary task (labels > 0 are foreground) for every variant; bpl always is")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the runs already finished under --out (their run.json; evaluations a role added"
                             " since are made) and run only the others")
    parser.add_argument("--summarize-only", action="store_true",
                        help="train nothing: tabulate the runs already finished under --out")
    parser.add_argument("--figures-from", nargs="+", metavar="DIR|LABEL=DIR|results.json",
                        help="train nothing: draw the figures from finished run folders (their compare.json; "
                             "LABEL=DIR names a folder's one variant) or from one results.json")
    parser.add_argument("--figures-out", type=Path, default=None,
                        help="where --figures-from writes (default: the results.json's folder, else "
                             "<first folder>/figures)")
    parser.add_argument("--figure-cost", type=Path, default=FIGURES_DIR / compare_figures.COST_FILE,
                        help="time per iteration relative to supervised: the committed CPU table of "
                             "docs/benchmarks.md or a bench_methods.py JSON")
    parser.add_argument("--figure-roles", nargs="+", default=["student"],
                        help="which weights --figures-from plots per variant (student, teacher, ...)")
    args = parser.parse_args()
    if args.figures_from:
        try:
            written = figures(args.figures_from, args.figures_out, args.figure_cost, args.figure_roles)
        except (OSError, ValueError) as err:
            parser.error(str(err))
        print("\n".join(str(p) for p in written))
        return
    for variant in args.variants:
        bundle, configs = _configs(variant)
        missing = [c for c in configs if not (REPO / "bundles" / bundle / "configs" / c).is_file()]
        if missing:
            parser.error(f"variant {variant!r}: bundles/{bundle}/configs has no {missing}")
    if args.parallel > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    generated = args.data is None
    args.data = SCENARIO_DATA[args.scenario] if generated else args.data

    start = time.time()
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    if args.summarize_only:
        runs = [r for r in (collect(*job, args) for job in jobs) if r is not None]
    else:
        if generated:
            make_scenario(args.scenario, args.data)  # generated once; one with the same parameters is kept
        elif not args.data.is_dir():
            parser.error(f"--data {args.data}: no such folder")
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            runs = list(pool.map(lambda job: run_or_reuse(*job, args), jobs))
    if not runs:
        sys.exit(f"no finished run under {args.out}")
    summary = {"command": " ".join(["python", *sys.argv]), "scenario": args.scenario, "data": str(args.data),
               "iterations": args.iterations, "budget": args.budget,
               "classes": list(_classes(args)),
               "seeds": args.seeds, "variants": args.variants, "wall_s": round(time.time() - start, 1), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.json").write_text(json.dumps(summary, indent=2))
    text = table(runs, args.variants, _classes(args), roles(args))
    (args.out / "results.md").write_text(f"`{summary['command']}` ({summary['wall_s']:.0f} s)\n\n{text}")
    print(text)


if __name__ == "__main__":
    main()
