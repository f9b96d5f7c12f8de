"""Summaries of evaluation outputs: read MONAI MetricsSaver CSVs, compare methods, draw an overlay figure."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["read_metric_csvs", "format_table", "save_overlay_png"]

METRICS = ("dice", "hd95", "asd")


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def read_metric_csvs(eval_dir: str | Path, class_names: Sequence[str], metrics: Sequence[str] = METRICS) -> dict:
    """Read ``<metric>_raw.csv`` files written by ``monai.handlers.MetricsSaver`` (``metric_details="*"``).

    Args:
        eval_dir: the evaluator's ``output_dir``.
        class_names: foreground class names, in the CSV's column order (``class0`` = first foreground class).
        metrics: metric names (the evaluate config's metric keys).

    Returns:
        ``{"cases": {case: {metric: {class: value}}}, "mean": {metric: {class: value, "mean": value}}}``;
        means skip NaN/inf (e.g. HD95 of a class missing from a prediction) and report NaN if nothing is left.

    Raises:
        FileNotFoundError: naming the missing CSV and the command that writes it.
    """
    eval_dir = Path(eval_dir)
    cases: dict[str, dict[str, dict[str, float]]] = {}
    mean: dict[str, dict[str, float]] = {}
    for metric in metrics:
        path = eval_dir / f"{metric}_raw.csv"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: run the bundle's evaluate workflow first "
                "(--config_file \"['configs/train.json','configs/evaluate.json']\")."
            )
        per_class: dict[str, list[float]] = {name: [] for name in class_names}
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                case = Path(row["filename"]).name.split(".")[0]
                values = {name: float(row[f"class{i}"]) for i, name in enumerate(class_names)}
                cases.setdefault(case, {})[metric] = values
                for name, value in values.items():
                    per_class[name].append(value)
        mean[metric] = {name: _mean(v) for name, v in per_class.items()}
        mean[metric]["mean"] = _mean(list(mean[metric].values()))
    return {"cases": cases, "mean": mean}


def format_table(results: Mapping[str, Mapping], metrics: Sequence[str] = METRICS) -> str:
    """A plain-text table, one row per method: mean Dice (%), HD95 and ASD (voxels x spacing, mm), per class.

    Args:
        results: ``{method: read_metric_csvs(...)}``.
        metrics: which metrics to show.

    Returns:
        The table.
    """
    first = next(iter(results.values()))
    classes = [c for c in first["mean"][metrics[0]] if c != "mean"]
    header = ["method"] + [f"{m} {c}" for m in metrics for c in classes + ["mean"]]
    rows = []
    for method, res in results.items():
        row = [method]
        for m in metrics:
            for c in classes + ["mean"]:
                value = res["mean"][m][c]
                row.append(f"{100 * value:.1f}" if m == "dice" else f"{value:.2f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines) + "\n(dice in %, hd95 and asd in mm; mean over the held-out test cases)"


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
