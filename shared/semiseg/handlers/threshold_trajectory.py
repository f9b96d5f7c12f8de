"""The learned pseudo-label threshold of Bayesian Pseudo Labels over a run: a CSV written by training, a PNG by
``evaluate``."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["ThresholdTrajectory", "plot_threshold_trajectory", "TRAJECTORY_COLUMNS", "TRAJECTORY_CSV"]

TRAJECTORY_CSV = "threshold_trajectory.csv"
# the BPLMethod outputs recorded, after the iteration
TRAJECTORY_COLUMNS = ("threshold_mu", "threshold_sigma", "threshold", "pseudo_foreground", "bpl_alpha", "pseudo_kept")

logger = logging.getLogger(__name__)


class ThresholdTrajectory:
    """Record the threshold posterior's mean and spread, the sampled threshold, the pseudo-labels' foreground fraction,
    the warm-up weight and whether the terms were kept, every iteration, into ``<output_dir>/threshold_trajectory.csv``.

    Values stay on the device during an epoch (no sync per iteration) and are appended to the file at every
    ``EPOCH_COMPLETED`` and at ``COMPLETED``. A fresh run (iteration 0 at ``STARTED``) starts a new file; a resumed
    run keeps the rows up to the iteration it resumes from. Iterations without the terms (``batch_u`` 0) add no row.
    Under ``torch.distributed`` only rank 0 writes (the threshold is the same on every rank).

    Args:
        output_dir: the folder (``@output_dir``, where ``evaluate`` looks for it).
        filename: the CSV's name.
    """

    def __init__(self, output_dir: str | os.PathLike[str], filename: str = TRAJECTORY_CSV) -> None:
        self.path = Path(output_dir) / filename
        self._rows: list[tuple[int, torch.Tensor]] = []

    @staticmethod
    def _writes() -> bool:
        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED``, ``ITERATION_COMPLETED``, ``EPOCH_COMPLETED`` and ``COMPLETED`` (idempotent)."""
        if engine.has_event_handler(self.record, Events.ITERATION_COMPLETED):
            return
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.flush)
        engine.add_event_handler(Events.COMPLETED, self.flush)

    def start(self, engine: Engine) -> None:
        """Start the file (fresh run) or cut it back to the iteration a resumed run starts from."""
        self._rows = []
        if not self._writes():
            return
        keep: list[list[str]] = []
        if engine.state.iteration > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                keep = [row for row in csv.reader(f)][1:]
            keep = [row for row in keep if row and int(row[0]) <= engine.state.iteration]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("iteration", *TRAJECTORY_COLUMNS))
            writer.writerows(keep)

    def record(self, engine: Engine) -> None:
        """Keep this iteration's values (device tensors, no sync)."""
        output = engine.state.output
        if not isinstance(output, dict) or any(key not in output for key in TRAJECTORY_COLUMNS):
            return
        device = output["threshold"].device if isinstance(output["threshold"], torch.Tensor) else None
        values = torch.stack([torch.as_tensor(output[key], dtype=torch.float32, device=device).detach().reshape(())
                              for key in TRAJECTORY_COLUMNS])
        self._rows.append((engine.state.iteration, values))

    def flush(self, engine: Engine) -> None:
        """Append the kept rows to the file (one device-to-host copy)."""
        rows, self._rows = self._rows, []
        if not rows or not self._writes():
            return
        values = torch.stack([v.cpu() for _, v in rows]).tolist()
        with open(self.path, "a", newline="") as f:
            lines = ([iteration, *(f"{x:.6g}" for x in row)] for (iteration, _), row in zip(rows, values))
            csv.writer(f).writerows(lines)


def plot_threshold_trajectory(
    csv_path: str | os.PathLike[str], png_path: str | os.PathLike[str] | None = None,
    columns: Sequence[str] = ("threshold", "threshold_mu", "threshold_sigma", "pseudo_foreground"),
) -> Path | None:
    """Plot the columns of a :class:`ThresholdTrajectory` CSV against the iteration.

    Args:
        csv_path: the CSV training wrote.
        png_path: the PNG to write; default the CSV's path with ``.png``.
        columns: the columns to draw.

    Returns:
        The PNG's path, or None (with a warning) when the CSV does not exist or has no rows, as for weights trained
        elsewhere.

    Raises:
        ValueError: if the CSV lacks one of ``columns``.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        logger.warning("no threshold trajectory at %s (trained elsewhere?): no plot written", csv_path)
        return None
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        logger.warning("threshold trajectory %s has no rows: no plot written", csv_path)
        return None
    missing = [c for c in ("iteration", *columns) if c not in rows[0]]
    if missing:
        raise ValueError(f"{csv_path} lacks the column(s) {missing}; it has {list(rows[0])}.")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [int(r["iteration"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for column in columns:
        ax.plot(iterations, [float(r[column]) for r in rows], label=column, linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("Bayesian Pseudo Labels: learned threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(png_path) if png_path is not None else csv_path.with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
