"""Summaries of evaluation outputs: read MONAI MetricsSaver CSVs, compare methods, draw an overlay figure.

Units (docs/architecture.md §5): Dice is a fraction (shown in % in tables); HD95 and ASD are in mm, measured with
each image's own voxel spacing by :mod:`semiseg.metrics.distance`, which gives a class present in exactly one of
label and prediction (a *miss*: missed or spurious structure) the image diagonal in mm instead of NaN, so the means
include every case; ``misses`` counts those cases per class.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semiseg.handlers.case_metrics import case_names

__all__ = ["read_metric_csvs", "format_table", "save_overlay_png", "METRICS", "DISTANCE_METRICS", "MISSES", "UNITS"]

METRICS = ("dice", "hd95", "asd")
DISTANCE_METRICS = ("hd95", "asd")  # in mm, never NaN (miss penalty): a NaN here is an error, not a skip
MISSES = "misses"  # the evaluate config's MissedStructures metric: per case and class, 1 if missed or spurious
UNITS = {"dice": "fraction", "hd95": "mm", "asd": "mm", MISSES: "count"}


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _read_raw_csv(eval_dir: Path, metric: str, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{case: {class: value}}`` from ``<metric>_raw.csv``, cases named as the per-case JSON files
    (:func:`semiseg.handlers.case_metrics.case_names`)."""
    path = eval_dir / f"{metric}_raw.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: run the bundle's evaluate workflow first "
            "(--config_file \"['configs/train.json','configs/evaluate.json']\")."
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = case_names([row["filename"] for row in rows])
    return {case: {c: float(row[f"class{i}"]) for i, c in enumerate(class_names)} for case, row in zip(names, rows)}


def _units(eval_dir: Path, cases: Sequence[str], metrics: Sequence[str]) -> dict[str, str]:
    """Units of ``metrics``: from the per-case JSON files if any (all cases must agree), else :data:`UNITS`."""
    units = {m: UNITS[m] for m in metrics if m in UNITS}
    seen: dict[str, tuple[str, str]] = {}  # metric -> (unit, first case with it)
    for case in cases:
        path = eval_dir / f"{case}_metrics.json"
        if not path.is_file():
            continue
        for metric, unit in json.loads(path.read_text()).get("units", {}).items():
            first = seen.setdefault(metric, (unit, case))
            if first[0] != unit:
                raise ValueError(
                    f"{eval_dir}: {metric} is in {first[0]} for case {first[1]!r} but in {unit} for case {case!r}; a "
                    "mean over both means nothing. Give the distance handlers and CaseMetricsWriter a `spacing` for "
                    "the files without one (see the spacing_note of their <case>_metrics.json) and evaluate again."
                )
    units.update({metric: unit for metric, (unit, _) in seen.items()})
    return units


def read_metric_csvs(
    eval_dir: str | Path, class_names: Sequence[str], metrics: Sequence[str] = METRICS, misses: str | None = MISSES
) -> dict:
    """Read ``<metric>_raw.csv`` files written by ``monai.handlers.MetricsSaver`` (``metric_details="*"``).

    Distances (``hd95``, ``asd``) are in mm and already include the miss penalty (the image diagonal in mm, see
    :mod:`semiseg.metrics.distance`), so their means are over every case; a NaN/inf distance means the CSV was
    written by a voxel-unit evaluation that skipped misses, and is refused rather than left out of the mean. Dice is
    NaN only where the label lacks the class (MONAI's ``ignore_empty``); those cases are left out of the Dice mean
    and are counted in ``misses`` when the prediction has the class.

    Args:
        eval_dir: the evaluator's ``output_dir``.
        class_names: foreground class names, in the CSV's column order (``class0`` = first foreground class).
        metrics: metric names (the evaluate config's metric keys).
        misses: name of the miss-count metric (``misses_raw.csv``); ``None`` to skip it.

    Returns:
        ``{"cases": {case: {metric: {class: value}, "misses": {class: 0 | 1}}},
        "mean": {metric: {class: value, "mean": value}}, "misses": {class: count, "total": count},
        "units": {metric: unit}}``. The units are those of the per-case ``<case>_metrics.json`` files where the
        evaluation wrote them (``"voxel"`` for the distances of files without a voxel spacing), else mm.

    Raises:
        FileNotFoundError: naming the missing CSV and the command that writes it.
        ValueError: naming the file, case and class of a non-finite distance, or the cases whose units differ.
    """
    eval_dir = Path(eval_dir)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    mean: dict[str, dict[str, float]] = {}
    for metric in metrics:
        per_case = _read_raw_csv(eval_dir, metric, class_names)
        per_class: dict[str, list[float]] = {name: [] for name in class_names}
        for case, values in per_case.items():
            for name, value in values.items():
                if metric in DISTANCE_METRICS and not math.isfinite(value):
                    raise ValueError(
                        f"{eval_dir / f'{metric}_raw.csv'}: {metric} of class {name!r} in case {case!r} is {value}: "
                        "the CSV comes from an evaluation that measured in voxels and skipped misses. Re-run the "
                        "bundle's evaluate workflow with the current configs/evaluate.json (distances in mm, misses "
                        "penalised)."
                    )
                per_class[name].append(value)
            cases.setdefault(case, {})[metric] = values
        mean[metric] = {name: _mean(v) for name, v in per_class.items()}
        mean[metric]["mean"] = _mean(list(mean[metric].values()))
    result: dict = {"cases": cases, "mean": mean, "units": _units(eval_dir, list(cases), metrics)}
    if misses is not None:
        flags = _read_raw_csv(eval_dir, misses, class_names)
        counts = {name: 0 for name in class_names}
        for case, values in flags.items():
            case_flags = {name: int(round(v)) for name, v in values.items()}
            cases.setdefault(case, {})[misses] = case_flags  # type: ignore[assignment]
            for name, flag in case_flags.items():
                counts[name] += flag
        result[misses] = {**counts, "total": sum(counts.values())}
        result["units"].setdefault(misses, UNITS.get(misses, "count"))
    return result


def format_table(results: Mapping[str, Mapping], metrics: Sequence[str] = METRICS, misses: str = MISSES) -> str:
    """A plain-text table, one row per method: mean Dice (%), HD95 and ASD (mm) per class, and the miss counts.

    Distance columns are named with their unit (``hd95[mm] organ``, or ``[voxel]`` for files without a spacing, see
    :func:`read_metric_csvs`); their means include the miss penalty (the image
    diagonal in mm) for every case where a class is in exactly one of label and prediction, and the ``misses``
    columns say how many such cases each class has (shown when every result has them).

    Args:
        results: ``{method: read_metric_csvs(...)}``.
        metrics: which metrics to show.
        misses: the miss-count entry of the results.

    Returns:
        The table.

    Raises:
        ValueError: if the methods' units differ.
    """
    first = next(iter(results.values()))
    classes = [c for c in first["mean"][metrics[0]] if c != "mean"]
    units = first.get("units", UNITS)
    if any(res.get("units", UNITS).get(m) != units.get(m) for res in results.values() for m in metrics):
        raise ValueError(f"the methods' units differ ({[res.get('units') for res in results.values()]}): no table.")
    names = {m: f"{m}[{units[m]}]" if units.get(m) in ("mm", "voxel") else m for m in metrics}
    header = ["method"] + [f"{names[m]} {c}" for m in metrics for c in classes + ["mean"]]
    show_misses = all(misses in res for res in results.values())
    if show_misses:
        header += [f"{misses} {c}" for c in classes + ["total"]]
    rows = []
    num_cases = 0
    for method, res in results.items():
        row = [method]
        for m in metrics:
            for c in classes + ["mean"]:
                value = res["mean"][m][c]
                row.append(f"{100 * value:.1f}" if m == "dice" else f"{value:.2f}")
        if show_misses:
            row += [str(res[misses][c]) for c in classes + ["total"]]
        num_cases = max(num_cases, len(res.get("cases", {})))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    in_mm = units.get(DISTANCE_METRICS[0], "mm") == "mm"
    unit = "mm" if in_mm else "voxels"
    source = "from each image's voxel spacing" if in_mm else "(the files store no voxel spacing)"
    note = (
        f"(dice in %, hd95 and asd in {unit} {source}; mean over the {num_cases} held-out test cases, a missed or "
        f"spurious structure counted at the image diagonal in {unit}"
    )
    note += f"; {misses} = cases where the class is in exactly one of label and prediction)" if show_misses else ")"
    return "\n".join(lines) + "\n" + note


def save_overlay_png(
    path: str | Path, image: np.ndarray, label: np.ndarray, preds: Mapping[str, np.ndarray], title: str = ""
) -> Path:
    """Save one axial slice of ``image`` with ground truth and each prediction as coloured overlays.

    The slice is the one with the most foreground in ``label``.

    Args:
        path: output PNG.
        image: 3-D image ``(X, Y, Z)``.
        label: 3-D integer labels.
        preds: ``{method: 3-D integer prediction}``.
        title: figure title.

    Returns:
        The written path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    z = int(np.argmax((label > 0).sum(axis=(0, 1))))
    cmap = ListedColormap([(0, 0, 0, 0), (0.1, 0.8, 0.2, 0.45), (0.95, 0.2, 0.1, 0.6)])
    panels = [("image", None), ("ground truth", label)] + list(preds.items())
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (name, seg) in zip(axes, panels):
        ax.imshow(np.rot90(image[:, :, z]), cmap="gray")
        if seg is not None:
            ax.imshow(np.rot90(seg[:, :, z].astype(int)), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
