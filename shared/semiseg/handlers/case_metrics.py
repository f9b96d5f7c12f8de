"""Per-case metric JSON files from an evaluator, one per case next to its segmentation (docs/architecture.md §5)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from semiseg.engines.outputs import image_filenames

__all__ = ["CaseMetricsWriter"]


class CaseMetricsWriter:
    """Write ``<output_dir>/<case>_metrics.json`` with every per-case metric the evaluator computed.

    Reads the file name of each case from the decollated batch (``image`` meta) and the per-case values from
    ``engine.state.metric_details`` (MONAI metric handlers with ``save_details=True``, the default). Each file holds
    ``{"image": path, "<metric>": {"<class>": value, ..., "mean": value}}``; NaN/inf (e.g. HD95 of a class absent
    from the prediction) are written as ``null``.

    Args:
        output_dir: where to write.
        class_names: names of the metric columns (foreground classes when ``include_background=False``);
            default ``class0``, ``class1``, ... as in MONAI's MetricsSaver.
    """

    def __init__(self, output_dir: str | os.PathLike[str], class_names: Sequence[str] | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self._files: list[str] = []

    def attach(self, engine: Engine) -> None:
        """Collect file names per iteration, write at the end of the run (idempotent)."""
        if not engine.has_event_handler(self._collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, lambda e: self._files.clear())
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self)

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item in batch:
            names = image_filenames(item)
            self._files.append(names[0] if names else f"case_{len(self._files):03d}")

    @staticmethod
    def _value(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    def __call__(self, engine: Engine) -> None:
        """Write one JSON per case."""
        details = {k: torch.as_tensor(v).reshape(len(self._files), -1) for k, v in engine.state.metric_details.items()}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(self._files):
            report: dict = {"image": path}
            for metric, values in details.items():
                row = values[i].tolist()
                names = self.class_names or [f"class{c}" for c in range(len(row))]
                finite = [v for v in row if math.isfinite(v)]
                report[metric] = {n: self._value(v) for n, v in zip(names, row)}
                report[metric]["mean"] = sum(finite) / len(finite) if finite else None
            case = Path(path).name.split(".")[0]
            (self.output_dir / f"{case}_metrics.json").write_text(json.dumps(report, indent=2))
