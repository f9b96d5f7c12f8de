"""Figures of ``scripts/compare_methods.py``'s results, each PNG with the plotted values as JSON beside it.

Three figures, drawn from one results file (``results.json``, :func:`results_from_runs` writes it from finished
``compare_methods.py`` folders):

- ``dice_per_seed.png``: mean Dice x 100 of every method per seed (a marker per seed), its mean ± standard deviation
  over seeds, and the supervised baseline's seeds as dashed lines in the same seed colours; one panel per task (the
  demo's organ and lesion, or its binary foreground);
- ``paired_differences.png``: each method minus the supervised baseline, seed by seed (the same data and seed), and
  the mean ± standard deviation of those differences;
- ``cost_vs_gain.png``: the paired gain against the cost of an iteration relative to ``supervised`` (the ratios of
  ``scripts/bench/bench_methods.py``, docs/benchmarks.md: same crops, one process, not wall times), one marker per
  method at the largest crop measured, a line to the smallest.

``<name>.json`` beside ``<name>.png`` holds every plotted number. A point marked ``"derived"`` is not in the results
file: it is the baseline's seed plus the method's paired difference for that seed (or the method's seed minus the
baseline's), which ``results.json`` transcribed from rounded tables gives to ±0.1; ``"given"`` points are the file's
own numbers.

``results.json``::

    {"source": "...", "baseline": "supervised",
     "tasks": [{"task": "organ, lesion", "classes": ["organ", "lesion"], "scenario": "default",
                "rows": [{"label": "mean_teacher", "variant": "mean_teacher", "role": "student",
                          "kind": "method",           # "baseline" | "method" | "control"
                          "cost_key": "mean_teacher",  # the bundle's name in the cost table, or null
                          "dice": {"mean": 67.7, "sd": 1.8, "seeds": {"0": 69.8, ...}},
                          "paired": {"mean": 0.3, "sd": 0.4, "seeds": {"0": 0.8, ...}}}, ...]}]}

The baseline row (``kind`` ``"baseline"``, ``paired`` null) comes first in each task; ``seeds`` may be empty where
only the mean ± sd is known.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "BASELINE",
    "COST_FILE",
    "FIGURES",
    "RESULTS_FILE",
    "figure_data",
    "read_cost",
    "results_from_runs",
    "write_figures",
]

BASELINE = "supervised"
RESULTS_FILE = "results.json"
COST_FILE = "cost_per_iteration.json"
FIGURES = ("dice_per_seed", "paired_differences", "cost_vs_gain")
SEED_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
KIND_COLOURS = {"baseline": "black", "method": "tab:blue", "control": "tab:gray"}
DPI = 100


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def _seed_key(seed: Any) -> str:
    return str(int(seed))


def results_from_runs(sources: Sequence[tuple[str | None, Path]], roles: Sequence[str] = ("student",),
                      command: str = "") -> dict[str, Any]:
    """The results file (module docstring) from finished ``compare_methods.py`` folders.

    Each folder's ``compare.json`` lists its runs; runs are grouped by task (the classes they were evaluated on and
    the demo scenario, ``compare_methods.py --binary`` / ``--scenario``) and by variant and role. The baseline is
    the ``supervised`` variant's student of the same task; paired differences are taken seed by seed where both
    have the seed. Values are Dice x 100 (mean of the classes), unrounded.

    Args:
        sources: ``(label, folder)`` pairs; a label renames the one variant of its folder (a control such as the
            supervised bundle on another network: ``supervised@ugpcl``), None keeps the variants' names.
        roles: which weights to plot (``student``, ``teacher``, ...); a role other than ``student`` is labelled
            ``"<variant> (<role>)"``.
        command: the command that made the file, recorded as its ``source``.

    Returns:
        The results dict.

    Raises:
        FileNotFoundError: for a folder without ``compare.json``.
        ValueError: for a labelled folder with more than one variant, or the same variant, role, task and seed in
            two folders.
    """
    tasks: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, str, str, str], Path] = {}
    for label, folder in sources:
        path = Path(folder) / "compare.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --figures-from takes folders of finished compare_methods.py runs (--out), or "
                "one results.json")
        summary = json.loads(path.read_text())
        classes = list(summary.get("classes") or ["organ", "lesion"])
        scenario = summary.get("scenario") or "default"
        variants = sorted({run["variant"] for run in summary["runs"]})
        if label is not None and len(variants) != 1:
            raise ValueError(f"{label}={folder}: a labelled folder must hold one variant, it holds {variants}")
        name_of_task = ", ".join(classes) + ("" if scenario == "default" else f" ({scenario})")
        task = tasks.setdefault(name_of_task, {"task": name_of_task, "classes": classes, "scenario": scenario,
                                               "rows": {}})
        for run in summary["runs"]:
            variant = run["variant"]
            name = label or variant
            for role in roles:
                if role not in run:
                    continue
                row_label = name if role == "student" else f"{name} ({role})"
                key = (task["task"], row_label, role, _seed_key(run["seed"]))
                if key in seen:
                    raise ValueError(
                        f"{row_label} seed {run['seed']} ({task['task']}) is in both {seen[key]} and {folder}: name "
                        "one folder's variant with LABEL=DIR (e.g. supervised@ugpcl=results/compare_ugpcl_backbone)")
                seen[key] = Path(folder)
                row = task["rows"].setdefault(row_label, {
                    "label": row_label, "variant": variant, "role": role,
                    "kind": "baseline" if (name, role) == (BASELINE, "student") else (
                        "control" if label is not None and variant.split("+")[0] == BASELINE else "method"),
                    "cost_key": label if label is not None else (variant if "+" not in variant else None),
                    "dice": {"seeds": {}}, "paired": None,
                })
                row["dice"]["seeds"][_seed_key(run["seed"])] = 100 * float(run[role]["dice"]["mean"])
    out_tasks = []
    for task in tasks.values():
        rows = list(task["rows"].values())
        baseline = next((r for r in rows if r["kind"] == "baseline"), None)
        for row in rows:
            seeds = row["dice"]["seeds"] = dict(sorted(row["dice"]["seeds"].items(), key=lambda kv: int(kv[0])))
            row["dice"].update(_summary(list(seeds.values())))
            if baseline is not None and row is not baseline:
                base = baseline["dice"]["seeds"]
                diffs = {s: v - base[s] for s, v in seeds.items() if s in base}
                row["paired"] = {**_summary(list(diffs.values())), "seeds": diffs} if diffs else None
        rows.sort(key=lambda r: r["kind"] != "baseline")  # the baseline first, the others in the order read
        out_tasks.append({"task": task["task"], "classes": task["classes"], "scenario": task["scenario"],
                          "rows": rows})
    return {"source": command, "baseline": BASELINE, "tasks": out_tasks}


def read_cost(path: Path) -> dict[str, dict[str, float]]:
    """Time per iteration relative to ``supervised``, ``{bundle: {crop: ratio}}``, from a ``bench_methods.py`` JSON
    (``results/bench/methods.json``) or the committed table of the same shape (docs/figures/cost_per_iteration.json:
    ``{"sizes": {"48": {"mean_teacher": {"step_ratio_to_supervised": 1.09}, ...}, ...}}``).

    Raises:
        ValueError: if the file has no ``sizes`` with ``step_ratio_to_supervised`` values.
    """
    data = json.loads(Path(path).read_text())
    cost: dict[str, dict[str, float]] = {}
    for size, table in (data.get("sizes") or {}).items():
        for bundle, row in table.items():
            if "step_ratio_to_supervised" in row:
                cost.setdefault(bundle, {})[str(size)] = float(row["step_ratio_to_supervised"])
    if not cost:
        raise ValueError(f"{path}: no 'sizes' -> bundle -> 'step_ratio_to_supervised' (a bench_methods.py JSON)")
    return cost


def _dice_points(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per-seed Dice of a row: its own ("given"), else the baseline's plus the paired difference ("derived")."""
    given = row["dice"].get("seeds") or {}
    paired = (row.get("paired") or {}).get("seeds") or {}
    base = (baseline or {}).get("dice", {}).get("seeds") or {}
    points = {s: {"seed": int(s), "dice": v, "source": "given"} for s, v in given.items()}
    for s, d in paired.items():
        if s not in points and s in base:
            points[s] = {"seed": int(s), "dice": round(base[s] + d, 6), "source": "derived"}
    return [points[s] for s in sorted(points, key=int)]


def _paired_points(row: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """Per-seed paired differences of a row: its own ("given"), else its seed minus the baseline's ("derived")."""
    paired = (row.get("paired") or {}).get("seeds") or {}
    given = row["dice"].get("seeds") or {}
    base = (baseline or {}).get("dice", {}).get("seeds") or {}
    points = {s: {"seed": int(s), "difference": d, "source": "given"} for s, d in paired.items()}
    for s, v in given.items():
        if s not in points and s in base:
            points[s] = {"seed": int(s), "difference": round(v - base[s], 6), "source": "derived"}
    return [points[s] for s in sorted(points, key=int)]


def _task_suffix(task: Mapping[str, Any], first: Mapping[str, Any]) -> str:
    return "" if task is first else f" [{task['task']}]"


def figure_data(results: Mapping[str, Any], cost: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict]:
    """The values each figure plots (what its JSON holds), from the results file and the cost table.

    Args:
        results: the results dict (module docstring).
        cost: ``{bundle: {crop: ratio}}`` (:func:`read_cost`), or None for no cost figure data.

    Returns:
        ``{figure name: data}`` for :data:`FIGURES`.
    """
    tasks = list(results["tasks"])
    dice_panels, paired_rows, cost_points, not_plotted = [], [], [], []
    for task in tasks:
        rows = task["rows"]
        baseline = next((r for r in rows if r["kind"] == "baseline"), None)
        suffix = _task_suffix(task, tasks[0])
        dice_panels.append({
            "task": task["task"],
            "baseline": None if baseline is None else {
                "label": baseline["label"], "mean": baseline["dice"]["mean"], "sd": baseline["dice"]["sd"],
                "seeds": [{"seed": int(s), "dice": v} for s, v in (baseline["dice"].get("seeds") or {}).items()]},
            "rows": [{"label": r["label"], "kind": r["kind"], "mean": r["dice"]["mean"], "sd": r["dice"]["sd"],
                      "points": _dice_points(r, baseline)} for r in rows],
        })
        for row in rows:
            if row is baseline or row.get("paired") is None:
                continue
            paired_rows.append({"label": row["label"] + suffix, "task": task["task"], "kind": row["kind"],
                                "mean": row["paired"]["mean"], "sd": row["paired"]["sd"],
                                "points": _paired_points(row, baseline)})
        for row in rows:
            key = row.get("cost_key")
            ratios = None if cost is None or key is None else cost.get(key)
            if row is baseline:
                if task is tasks[0]:  # one reference point (1, 0) for every task's baseline
                    cost_points.append({"label": row["label"], "task": task["task"], "kind": row["kind"],
                                        "cost": ratios or {"reference": 1.0}, "gain_mean": 0.0, "gain_sd": 0.0})
            elif ratios is None or row.get("paired") is None:
                why = "no paired difference" if row.get("paired") is None else (
                    "no cost measured" if key is None or cost is None else f"{key!r} is not in the cost table")
                not_plotted.append({"label": row["label"] + suffix, "why": why})
            else:
                cost_points.append({"label": row["label"] + suffix, "task": task["task"], "kind": row["kind"],
                                    "cost": dict(ratios), "gain_mean": row["paired"]["mean"],
                                    "gain_sd": row["paired"]["sd"]})
    for number, point in enumerate(cost_points, start=1):
        point["number"] = number  # the figure marks each point with its number and lists the labels beside it
    return {
        "dice_per_seed": {"unit": "Dice x 100, mean of the classes", "panels": dice_panels},
        "paired_differences": {"unit": "Dice points, method minus the supervised baseline of the same seed",
                               "rows": paired_rows},
        "cost_vs_gain": {"cost_unit": "time per iteration / supervised's (same crops, docs/benchmarks.md)",
                         "gain_unit": "paired Dice points (mean ± sd over seeds)", "points": cost_points,
                         "not_plotted": not_plotted},
    }


def _seed_colour(seed: int) -> str:
    return SEED_COLOURS[seed % len(SEED_COLOURS)]


def _draw_dice(data: Mapping[str, Any]) -> Figure:
    panels = data["panels"]
    widths = [max(2, len(p["rows"])) for p in panels]
    figure = Figure(figsize=(1.0 + 0.75 * sum(widths), 5.2))
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(panels), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    seeds_seen: dict[int, str] = {}
    for ax, panel in zip(axes, panels):
        baseline = panel["baseline"]
        if baseline is not None:
            ax.axhspan(baseline["mean"] - baseline["sd"], baseline["mean"] + baseline["sd"], color="0.9", zorder=0)
            for point in baseline["seeds"]:
                ax.axhline(point["dice"], color=_seed_colour(point["seed"]), linestyle="--", linewidth=0.8, zorder=1)
        for x, row in enumerate(panel["rows"]):
            ax.errorbar([x], [row["mean"]], yerr=[row["sd"]], fmt="_", markersize=18, capsize=4,
                        color=KIND_COLOURS.get(row["kind"], "black"), zorder=2)
            for point in row["points"]:
                colour = _seed_colour(point["seed"])
                seeds_seen[point["seed"]] = colour
                ax.plot([x + 0.12], [point["dice"]], "o", color=colour, zorder=3,
                        markerfacecolor=colour if point["source"] == "given" else "none")
        ax.set_xticks(range(len(panel["rows"])))
        ax.set_xticklabels([r["label"] for r in panel["rows"]], rotation=40, ha="right", fontsize=8)
        for tick, row in zip(ax.get_xticklabels(), panel["rows"]):
            tick.set_color(KIND_COLOURS["control"] if row["kind"] == "control" else "black")
        ax.set_xlim(-0.6, len(panel["rows"]) - 0.4)
        ax.set_title(panel["task"], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(data["unit"])
    handles = [axes[0].plot([], [], "o", color=c)[0] for c in seeds_seen.values()]
    labels = [f"seed {s}" for s in seeds_seen]
    handles += [axes[0].plot([], [], "o", color="0.4", markerfacecolor="none")[0],
                axes[0].plot([], [], "--", color="0.4")[0]]
    labels += ["seed derived: baseline + paired difference (±0.1)", "supervised baseline, per seed (band: mean ± sd)"]
    figure.suptitle("Dice per method and seed (bar: mean ± sd over seeds)", y=0.98, fontsize=11)
    figure.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.935), ncol=len(labels), fontsize=8,
                  frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.88))
    return figure


def _draw_paired(data: Mapping[str, Any]) -> Figure:
    rows = data["rows"]
    figure = Figure(figsize=(7.5, 1.2 + 0.42 * max(1, len(rows))))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for y, row in enumerate(rows):
        ax.errorbar([row["mean"]], [y], xerr=[row["sd"]], fmt="s", capsize=4, markersize=6,
                    color=KIND_COLOURS.get(row["kind"], "black"), zorder=2)
        for point in row["points"]:
            colour = _seed_colour(point["seed"])
            ax.plot([point["difference"]], [y + 0.22], "o", color=colour, markersize=4, zorder=3,
                    markerfacecolor=colour if point["source"] == "given" else "none")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["label"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(data["unit"] + "\nsquare: mean ± sd over seeds; dots: the seeds (hollow: derived, ±0.1)",
                  fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Paired differences against the supervised baseline", fontsize=11)
    figure.tight_layout()
    return figure


def _place_labels(ax: Any, labels: list[tuple[str, float, float]]) -> None:
    """Annotate each ``(text, x, y)`` next to its point, at the first of a few offsets (right, left, above, below)
    where it overlaps no label placed before it and stays inside the axes."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    offsets = [(dx, dy) for dy in (2, -9, 12, -19, 22, -29) for dx in (5, -5)]
    placed: list[Any] = []
    for text, x, y in labels:
        for dx, dy in offsets:
            note = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                               ha="left" if dx > 0 else "right")
            box = note.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(other) for other in placed):
                placed.append(box)
                break
            note.remove()
        else:  # crowded: keep the first offset
            placed.append(ax.annotate(text, (x, y), textcoords="offset points", xytext=offsets[0], fontsize=7
                                      ).get_window_extent(renderer))


def _draw_cost(data: Mapping[str, Any]) -> Figure:
    figure = Figure(figsize=(10.0, 5.5))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    numbers = []
    for point in data["points"]:
        ratios = list(point["cost"].values())
        colour = KIND_COLOURS.get(point["kind"], "black")
        x = ratios[-1]
        if len(ratios) > 1:
            ax.plot([min(ratios), max(ratios)], [point["gain_mean"]] * 2, color=colour, linewidth=2, alpha=0.5)
        ax.errorbar([x], [point["gain_mean"]], yerr=[point["gain_sd"]], fmt="o", capsize=3, color=colour)
        numbers.append((str(point["number"]), x, point["gain_mean"]))
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    low = min([1.0, *(min(p["cost"].values()) for p in data["points"])]) / 1.2
    high = max([1.0, *(max(p["cost"].values()) for p in data["points"])]) * 1.2
    ax.set_xlim(low, high)
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(data["cost_unit"] + "\ndot: the largest crop measured; line: the range over crops", fontsize=8)
    ax.set_ylabel(data["gain_unit"], fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title("Cost per iteration against gain over supervised", fontsize=11)
    key = "\n".join(f"{p['number']:>2}  {p['label']}" for p in data["points"])
    figure.text(0.71, 0.5, key, fontsize=7.5, va="center", ha="left", family="monospace")
    figure.tight_layout(rect=(0, 0, 0.7, 1))
    _place_labels(ax, numbers)
    return figure


_DRAW = {"dice_per_seed": _draw_dice, "paired_differences": _draw_paired, "cost_vs_gain": _draw_cost}


def write_figures(results: Mapping[str, Any], cost: Mapping[str, Mapping[str, float]] | None, out_dir: Path,
                  drawn_from: str = RESULTS_FILE) -> list[Path]:
    """Draw :data:`FIGURES` into ``out_dir`` (matplotlib, Agg), each ``<name>.png`` with ``<name>.json`` beside it.

    Args:
        results: the results dict (module docstring).
        cost: the cost table (:func:`read_cost`) or None.
        out_dir: where the files go (created).
        drawn_from: recorded in each JSON (the results file's name).

    Returns:
        The PNG paths.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in figure_data(results, cost).items():
        figure = _DRAW[name](data)
        png = out_dir / f"{name}.png"
        figure.savefig(png, dpi=DPI, metadata={"Software": None})
        (out_dir / f"{name}.json").write_text(
            json.dumps({"figure": png.name, "drawn_from": drawn_from, **data}, indent=1, allow_nan=False) + "\n")
        written.append(png)
    return written
