"""Quality-control report of an evaluation: per-case Dice, HD95, AULA and mean entropy, ranked for manual review.

Kushibar et al., "Layer Ensembles", MICCAI 2022, Sec. 3.3: a low area under the layer agreement (AULA) flags a
segmentation that is likely poor, so sorting cases by AULA (lowest first) gives a review order, and the Spearman
correlation between AULA and Dice over the test cases says how well it does (docs/architecture.md §5). As the
reference (``pianoza/LayerEnsembles@e5a4a88`` ``summarize_results/make_summary.py`` lines 125-137: ``aula_<c>``
against ``dsc_<c>``), the correlation is computed per foreground class, the AULA of class ``c`` against the Dice of
class ``c``; the case AULA (the agreement averaged over the classes present, :func:`semiseg.metrics.aula`) against
the mean foreground Dice is reported beside it and orders the review. :class:`QualityControlReport` is an Ignite
handler for ``evaluate.json``; it writes to ``output_dir``:

- ``qc_report.csv``: one row per case, ranked by AULA (lowest first): ``rank, case, image, aula, dice,
  hd95_<unit>, mean_entropy`` (Dice and HD95 averaged over the foreground classes that have a finite value), then
  ``aula_<class>, dice_<class>`` for each foreground class;
- ``qc_review.md``: the same ranking as a table, with the Spearman correlations (per class, and of the case AULA)
  and the number of cases;
- ``qc_aula_vs_dice.png``: AULA against Dice per case and class, the per-class Spearman correlations in the legend.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from semiseg.engines.outputs import image_filenames
from semiseg.handlers.case_metrics import case_names
from semiseg.inference.layer_ensembles import AULA_KEY, AULA_PER_CLASS_KEY

__all__ = ["QC_FILES", "QualityControlReport", "spearman", "write_qc_report"]

QC_FILES = ("qc_report.csv", "qc_review.md", "qc_aula_vs_dice.png")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation of the finite pairs (``scipy.stats.spearmanr``); NaN for fewer than 3 pairs or
    a constant series, where it is undefined."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return math.nan
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def _mean_finite(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _fmt(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else ""


def _rho_text(rho: float) -> str:
    return f"{rho:.3f}" if math.isfinite(rho) else "undefined (fewer than 3 cases or a constant column)"


def write_qc_report(
    cases: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike[str],
    unit: str = "mm",
    class_names: Sequence[str] | None = None,
) -> dict:
    """Write the QC files (module docstring) for per-case rows.

    Args:
        cases: one mapping per case with ``case``, ``image``, ``aula``, ``dice``, ``hd95``, ``mean_entropy``
            (floats; NaN where unknown) and, for the per-class correlation, ``aula_per_class`` and
            ``dice_per_class`` (one float per foreground class, NaN where unknown: a class absent from the label).
        output_dir: where to write.
        unit: the HD95 unit (``"mm"``, or ``"voxel"`` for data without spacing), in the column name.
        class_names: the foreground classes' names, for the columns (default ``class_1``, ``class_2``, ...).

    Returns:
        ``{"spearman": rho of the case AULA and the mean Dice, "spearman_per_class": {class: rho}, "cases": n,
        "files": [paths]}``; ``spearman_per_class`` is empty when the rows lack the per-class values.

    Raises:
        ValueError: if there is no case, a row lacks a field, or the per-class values are not one per class in
            every row.
    """
    fields = ("case", "image", "aula", "dice", "hd95", "mean_entropy")
    if not cases:
        raise ValueError("the QC report needs at least one evaluated case, got none.")
    for row in cases:
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"QC report row for {row.get('case', '?')!r} lacks {missing}.")
    per_class = all("aula_per_class" in r and "dice_per_class" in r for r in cases)
    num_classes = len(cases[0]["aula_per_class"]) if per_class else 0
    if per_class and any(len(r["aula_per_class"]) != num_classes or len(r["dice_per_class"]) != num_classes
                         for r in cases):
        raise ValueError(f"QC report rows need one AULA and one Dice per foreground class ({num_classes}) each.")
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(1, num_classes + 1)]
    if per_class and len(names) != num_classes:
        raise ValueError(f"QC report: {len(names)} class names for {num_classes} foreground classes: {names}.")
    names = names[:num_classes]
    ranked = sorted(cases, key=lambda r: (not math.isfinite(r["aula"]), r["aula"]))
    rho = spearman([r["aula"] for r in cases], [r["dice"] for r in cases])
    rho_per_class = {
        name: spearman([float(r["aula_per_class"][c]) for r in cases], [float(r["dice_per_class"][c]) for r in cases])
        for c, name in enumerate(names)
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["rank", "case", "image", "aula", "dice", f"hd95_{unit}", "mean_entropy"]
    header += [f"{kind}_{name}" for name in names for kind in ("aula", "dice")]
    rows = [
        [str(i), r["case"], r["image"], _fmt(r["aula"]), _fmt(r["dice"]), _fmt(r["hd95"]), _fmt(r["mean_entropy"])]
        + [_fmt(float(r[f"{kind}_per_class"][c])) for c in range(num_classes) for kind in ("aula", "dice")]
        for i, r in enumerate(ranked, start=1)
    ]
    with open(out / QC_FILES[0], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["# Quality control: cases ranked by AULA (lowest first: review these first)", ""]
    if rho_per_class:
        lines += [f"Spearman correlation over {len(cases)} cases of each class's AULA and the same class's Dice:", ""]
        lines += [f"- {name}: {_rho_text(value)}" for name, value in rho_per_class.items()]
        lines += ["", f"Of the case AULA (classes averaged; the ranking) and the mean Dice: {_rho_text(rho)}."]
    else:
        lines += [f"Spearman correlation of AULA and Dice over {len(cases)} cases: {_rho_text(rho)}."]
    lines += [
        "",
        "| " + " | ".join(header[:2] + header[3:]) + " |",
        "|" + "---|" * (len(header) - 1),
        *["| " + " | ".join(row[:2] + row[3:]) + " |" for row in rows],
    ]
    (out / QC_FILES[1]).write_text("\n".join(lines) + "\n")
    figure = Figure(figsize=(5, 4))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    series = [(f"{name}: rho {value:.3f}" if math.isfinite(value) else f"{name}: rho undefined",
               [float(r["aula_per_class"][c]) for r in cases], [float(r["dice_per_class"][c]) for r in cases])
              for c, (name, value) in enumerate(rho_per_class.items())] or [
        (None, [r["aula"] for r in cases], [r["dice"] for r in cases])]
    for label, x, y in series:
        ax.scatter(x, y, label=label)
        for r, a, d in zip(cases, x, y):
            ax.annotate(r["case"], (a, d), fontsize=7)
    if rho_per_class:
        ax.legend(fontsize=7)
    ax.set_xlabel("AULA (layer agreement)" + (" of the class" if rho_per_class else ""))
    ax.set_ylabel("Dice of the class" if rho_per_class else "Dice (foreground mean)")
    ax.set_title(f"AULA vs Dice per class (n = {len(cases)})" if rho_per_class
                 else f"AULA vs Dice: Spearman rho = {rho:.3f} (n = {len(cases)})" if math.isfinite(rho)
                 else f"AULA vs Dice: Spearman rho undefined (n = {len(cases)})")
    figure.tight_layout()
    figure.savefig(out / QC_FILES[2], dpi=100)
    return {"spearman": rho, "spearman_per_class": rho_per_class, "cases": len(cases),
            "files": [out / name for name in QC_FILES]}


class QualityControlReport:
    """Ignite handler for ``evaluate.json``: collect AULA and mean entropy per case, write the QC report at the end.

    AULA (``aula``, ``aula_per_class``) and the entropy map (``entropy``) are read from each case's post-processed
    output (:class:`semiseg.inference.layer_ensembles.LayerEnsembleUncertaintyd`); Dice (per foreground class) and
    HD95 from ``engine.state.metric_details`` (MONAI metric handlers keep per-case values), which are complete when
    the run completes. Case names are those of ``<case>_metrics.json``
    (:func:`semiseg.handlers.case_metrics.case_names`).

    Args:
        output_dir: where to write (``@output_dir``).
        dice_key: the Dice metric's name in the evaluator (a metric without the background: one value per
            foreground class).
        hd95_key: the HD95 metric's name.
        unit: HD95 unit in the column name.
        class_names: all class names, background first (``@class_names``), for the per-class columns.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        dice_key: str = "dice",
        hd95_key: str = "hd95",
        unit: str = "mm",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.dice_key, self.hd95_key, self.unit = dice_key, hd95_key, unit
        self.class_names = None if class_names is None else list(class_names)[1:]
        self._cases: list[tuple[str, float, float, list[float] | None]] = []
        self.result: dict | None = None

    def attach(self, engine: Engine) -> None:
        """Collect per iteration, write when the run completes (idempotent)."""
        if not engine.has_event_handler(self._collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, lambda _: self._cases.clear())
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        output = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item, out in zip(batch, output):
            if AULA_KEY not in out:
                raise KeyError(
                    f"QualityControlReport: the evaluator's output has no {AULA_KEY!r}; put "
                    "semiseg.inference.layer_ensembles.LayerEnsembleUncertaintyd in validate#postprocessing."
                )
            names = image_filenames(item)
            entropy = out.get("entropy")
            mean_entropy = float(torch.as_tensor(entropy).float().mean()) if entropy is not None else math.nan
            per_class = out.get(AULA_PER_CLASS_KEY)
            aula_classes = None if per_class is None else [float(v) for v in torch.as_tensor(per_class).reshape(-1)]
            self._cases.append(
                (names[0] if names else f"case_{len(self._cases):03d}", float(out[AULA_KEY].reshape(-1)[0]),
                 mean_entropy, aula_classes)
            )

    def __call__(self, engine: Engine) -> None:
        """Write the report (see :func:`write_qc_report`)."""
        details = engine.state.metric_details
        n = len(self._cases)
        per_case, classes = {}, {}
        for key in (self.dice_key, self.hd95_key):
            if key not in details:
                raise KeyError(
                    f"QualityControlReport: the evaluator has no per-case {key!r} metric (it has {sorted(details)})."
                )
            values = torch.as_tensor(details[key]).float().reshape(n, -1)
            per_case[key] = [_mean_finite(row.tolist()) for row in values]
            classes[key] = values.tolist()
        names = case_names([case[0] for case in self._cases])
        rows = []
        for i, (name, (path, aula, entropy, aula_classes)) in enumerate(zip(names, self._cases)):
            row = {"case": name, "image": path, "aula": aula, "dice": per_case[self.dice_key][i],
                   "hd95": per_case[self.hd95_key][i], "mean_entropy": entropy}
            if aula_classes is not None and len(aula_classes) == len(classes[self.dice_key][i]):
                row.update(aula_per_class=aula_classes, dice_per_class=classes[self.dice_key][i])
            rows.append(row)
        class_names = self.class_names
        if class_names is not None and rows and len(class_names) != len(rows[0].get("aula_per_class", class_names)):
            class_names = None  # e.g. a binarised task evaluated with the multi-class names: fall back to numbers
        self.result = write_qc_report(rows, self.output_dir, self.unit, class_names)
