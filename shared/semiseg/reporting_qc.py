"""Quality-control report of an evaluation: per-case Dice, HD95, AULA and mean entropy, ranked for manual review.

Kushibar et al., "Layer Ensembles", MICCAI 2022, Sec. 3.3: a low area under the layer agreement (AULA) flags a
segmentation that is likely poor, so sorting cases by AULA (lowest first) gives a review order, and the Spearman
correlation between AULA and Dice over the test cases says how well it does (docs/architecture.md §5).
:class:`QualityControlReport` is an Ignite handler for ``evaluate.json``; it writes to ``output_dir``:

- ``qc_report.csv``: one row per case, ranked by AULA (lowest first): ``rank, case, image, aula, dice,
  hd95_<unit>, mean_entropy`` (Dice and HD95 averaged over the foreground classes that have a finite value);
- ``qc_review.md``: the same ranking as a table, with the Spearman correlation and the number of cases;
- ``qc_aula_vs_dice.png``: AULA against Dice per case, the Spearman correlation in the title.
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
from semiseg.inference.layer_ensembles import AULA_KEY

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


def write_qc_report(cases: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike[str], unit: str = "mm") -> dict:
    """Write the QC files (module docstring) for per-case rows.

    Args:
        cases: one mapping per case with ``case``, ``image``, ``aula``, ``dice``, ``hd95``, ``mean_entropy``
            (floats; NaN where unknown).
        output_dir: where to write.
        unit: the HD95 unit (``"mm"``, or ``"voxel"`` for data without spacing), in the column name.

    Returns:
        ``{"spearman": rho, "cases": n, "files": [paths]}``.

    Raises:
        ValueError: if there is no case or a row lacks a field.
    """
    fields = ("case", "image", "aula", "dice", "hd95", "mean_entropy")
    if not cases:
        raise ValueError("the QC report needs at least one evaluated case, got none.")
    for row in cases:
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"QC report row for {row.get('case', '?')!r} lacks {missing}.")
    ranked = sorted(cases, key=lambda r: (not math.isfinite(r["aula"]), r["aula"]))
    rho = spearman([r["aula"] for r in cases], [r["dice"] for r in cases])
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["rank", "case", "image", "aula", "dice", f"hd95_{unit}", "mean_entropy"]
    rows = [
        [str(i), r["case"], r["image"], _fmt(r["aula"]), _fmt(r["dice"]), _fmt(r["hd95"]), _fmt(r["mean_entropy"])]
        for i, r in enumerate(ranked, start=1)
    ]
    with open(out / QC_FILES[0], "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    rho_text = f"{rho:.3f}" if math.isfinite(rho) else "undefined (fewer than 3 cases or a constant column)"
    lines = [
        "# Quality control: cases ranked by AULA (lowest first: review these first)",
        "",
        f"Spearman correlation of AULA and Dice over {len(cases)} cases: {rho_text}.",
        "",
        "| " + " | ".join(header[:2] + header[3:]) + " |",
        "|" + "---|" * (len(header) - 1),
        *["| " + " | ".join(row[:2] + row[3:]) + " |" for row in rows],
    ]
    (out / QC_FILES[1]).write_text("\n".join(lines) + "\n")
    figure = Figure(figsize=(5, 4))
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.scatter([r["aula"] for r in cases], [r["dice"] for r in cases])
    for r in cases:
        ax.annotate(r["case"], (r["aula"], r["dice"]), fontsize=7)
    ax.set_xlabel("AULA (layer agreement)")
    ax.set_ylabel("Dice (foreground mean)")
    ax.set_title(f"AULA vs Dice: Spearman rho = {rho:.3f} (n = {len(cases)})" if math.isfinite(rho)
                 else f"AULA vs Dice: Spearman rho undefined (n = {len(cases)})")
    figure.tight_layout()
    figure.savefig(out / QC_FILES[2], dpi=100)
    return {"spearman": rho, "cases": len(cases), "files": [out / name for name in QC_FILES]}


class QualityControlReport:
    """Ignite handler for ``evaluate.json``: collect AULA and mean entropy per case, write the QC report at the end.

    AULA (``aula``) and the entropy map (``entropy``) are read from each case's post-processed output
    (:class:`semiseg.inference.layer_ensembles.LayerEnsembleUncertaintyd`); Dice and HD95 from
    ``engine.state.metric_details`` (MONAI metric handlers keep per-case values), which are complete when the run
    completes. Case names are those of ``<case>_metrics.json`` (:func:`semiseg.handlers.case_metrics.case_names`).

    Args:
        output_dir: where to write (``@output_dir``).
        dice_key: the Dice metric's name in the evaluator.
        hd95_key: the HD95 metric's name.
        unit: HD95 unit in the column name.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], dice_key: str = "dice", hd95_key: str = "hd95", unit: str = "mm"
    ) -> None:
        self.output_dir = Path(output_dir)
        self.dice_key, self.hd95_key, self.unit = dice_key, hd95_key, unit
        self._cases: list[tuple[str, float, float]] = []
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
            self._cases.append(
                (names[0] if names else f"case_{len(self._cases):03d}", float(out[AULA_KEY].reshape(-1)[0]),
                 mean_entropy)
            )

    def __call__(self, engine: Engine) -> None:
        """Write the report (see :func:`write_qc_report`)."""
        details = engine.state.metric_details
        n = len(self._cases)
        per_case = {}
        for key in (self.dice_key, self.hd95_key):
            if key not in details:
                raise KeyError(
                    f"QualityControlReport: the evaluator has no per-case {key!r} metric (it has {sorted(details)})."
                )
            values = torch.as_tensor(details[key]).float().reshape(n, -1)
            per_case[key] = [_mean_finite(row.tolist()) for row in values]
        names = case_names([path for path, _, _ in self._cases])
        rows = [
            {"case": name, "image": path, "aula": aula, "dice": per_case[self.dice_key][i],
             "hd95": per_case[self.hd95_key][i], "mean_entropy": entropy}
            for i, (name, (path, aula, entropy)) in enumerate(zip(names, self._cases))
        ]
        self.result = write_qc_report(rows, self.output_dir, self.unit)
