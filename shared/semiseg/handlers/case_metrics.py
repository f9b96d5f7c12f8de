"""Per-case metric JSON files from an evaluator, one per case next to its segmentation (docs/architecture.md §5)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from semiseg.data.readers import split_h5_path
from semiseg.engines.outputs import image_filenames
from semiseg.metrics.distance import miss_penalty_mm, spacing_is_physical, voxel_spacing_mm

__all__ = ["CaseMetricsWriter", "COUNT_UNIT", "case_name_formatter", "case_names"]

COUNT_UNIT = "count"  # metrics with this unit are summarised per case by their "total", not their "mean"
_NO_SPACING_NOTE = (
    "the label's file stores no voxel spacing (.npy/.h5): distances are in voxels; give the distance handlers and "
    "CaseMetricsWriter a `spacing` to measure mm"
)


def case_names(paths: Sequence[str]) -> list[str]:
    """Short unique case names: the file name without its suffixes, prefixed by as many parent folders (joined with
    ``_``) as it takes to tell the cases apart.

    ``imagesTs/test_000.nii.gz`` gives ``test_000``; SSL4MIS keeps every case in ``<id>/mri_norm2.h5``, so
    ``LA/CASE04/mri_norm2.h5::image`` gives ``CASE04_mri_norm2`` when there is more than one case. The same path
    twice gets an index suffix.

    Args:
        paths: image file names (``file.h5::dataset`` allowed), one per case.

    Returns:
        One name per path, all different.
    """
    files = [Path(split_h5_path(str(p))[0]) for p in paths]
    stems = [f.name.split(".")[0] for f in files]
    folders = [[part for part in f.parent.parts if part not in ("/", "\\")] for f in files]
    for depth in range(max((len(f) for f in folders), default=0) + 1):
        names = ["_".join([*parts[max(0, len(parts) - depth) :], stem]) for parts, stem in zip(folders, stems)]
        if len(set(names)) == len(names):
            return names
    return [f"{stem}_{i:03d}" for i, stem in enumerate(stems)]


def case_name_formatter(items: Sequence[Mapping | str], key: str = "image") -> Callable[[Mapping, Any], dict]:
    """An ``output_name_formatter`` for MONAI's ``SaveImaged`` that names each output by :func:`case_names`.

    MONAI names outputs by the input's file stem, so SSL4MIS volumes (every case a ``<id>/mri_norm2.h5``) would all
    write ``mri_norm2_seg.nii.gz`` over each other; with this formatter the segmentation of a case carries the same
    name as its ``<case>_metrics.json``.

    Args:
        items: the evaluated data list (dicts holding ``key``) or the image paths.
        key: the image key of the items.

    Returns:
        ``formatter(meta, saver) -> {"subject": name, "idx": patch_index}``.
    """
    paths = [str(item[key]) if isinstance(item, Mapping) else str(item) for item in items]
    lookup: dict[str, str] = {}
    for path, name in zip(paths, case_names(paths)):
        lookup[path] = name
        lookup.setdefault(split_h5_path(path)[0], name)

    def formatter(meta: Mapping, saver: Any) -> dict:
        source = str(meta.get("filename_or_obj", ""))
        name = lookup.get(source) or lookup.get(split_h5_path(source)[0]) or case_names([source])[0]
        return {"subject": name, "idx": meta.get("patch_index")}

    return formatter


class CaseMetricsWriter:
    """Write ``<output_dir>/<case>_metrics.json`` with every per-case metric the evaluator computed.

    Reads the file name of each case from the decollated batch (``image`` meta), its voxel spacing from the affine of
    the postprocessed ``label`` (as the distance metrics do) and the per-case values from
    ``engine.state.metric_details`` (MONAI metric handlers with ``save_details=True``, the default). Each file holds::

        {"image": path,
         "spacing_mm": [sx, sy, sz], "miss_penalty_mm": diagonal,       # when the label has an affine
         "units": {"dice": "fraction", "hd95": "mm", ...},               # the metrics listed in ``units``
         "<metric>": {"<class>": value, ..., "mean": value},
         "<count metric>": {"<class>": n, ..., "total": n}}

    For a label read from a format without a voxel spacing (``.npy``, ``.h5``) and no ``spacing`` given, the distances
    are in voxels (see :mod:`semiseg.metrics.distance`): ``spacing_mm`` is ``null``, ``miss_penalty_voxels`` replaces
    ``miss_penalty_mm``, the ``mm`` units read ``voxel`` and a ``spacing_note`` says why. ``<case>`` is from
    :func:`case_names` (the file name, with parent folders where file names repeat).
    ``miss_penalty_mm`` is the distance that :mod:`semiseg.metrics.distance` gives a class present in exactly one of
    label and prediction (the image diagonal in mm); a metric whose unit is ``"count"`` (e.g. ``misses`` from
    :class:`semiseg.handlers.MissedStructures`: 1 where the class was missed or spurious) is written as integers with
    their ``total``. NaN/inf (e.g. Dice of a class absent from the label, which MONAI leaves out) are written as
    ``null`` and left out of the case ``mean``.

    Args:
        output_dir: where to write.
        class_names: names of the metric columns (foreground classes when ``include_background=False``);
            default ``class0``, ``class1``, ... as in MONAI's MetricsSaver.
        units: unit of each metric name, written to every file (``"mm"`` for the distance metrics); metrics with
            unit ``"count"`` get a ``total`` instead of a ``mean``.
        spacing: the fixed spacing in mm given to the distance handlers, if any (data without spacing); ``None``
            reads each label's affine, as they do.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        class_names: Sequence[str] | None = None,
        units: Mapping[str, str] | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names) if class_names is not None else None
        self.units = dict(units or {})
        self.spacing = spacing
        self._files: list[str] = []
        self._geometry: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Collect file names and spacings per iteration, write at the end of the run (idempotent)."""
        if not engine.has_event_handler(self._collect, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.STARTED, self._reset)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
            engine.add_event_handler(Events.COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._files.clear()
        self._geometry.clear()

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        output = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output] * len(batch)
        for item, out in zip(batch, output):
            names = image_filenames(item)
            self._files.append(names[0] if names else f"case_{len(self._files):03d}")
            label = out.get(Keys.LABEL) if isinstance(out, Mapping) else None
            if label is None and isinstance(item, Mapping):
                label = item.get(Keys.LABEL)
            self._geometry.append(self._label_geometry(label))

    def _label_geometry(self, label: Any) -> dict[str, Any]:
        """Spacing (mm) and miss penalty (mm) of a channel-first label; empty if it has no affine."""
        if not isinstance(label, torch.Tensor) or label.ndim < 2:
            return {}
        shape = tuple(label.shape[1:])
        if self.spacing is not None:
            given = [float(s) for s in (self.spacing if isinstance(self.spacing, Sequence) else [self.spacing])]
            spacing = tuple(given * len(shape) if len(given) == 1 else given)
        else:
            try:
                spacing = voxel_spacing_mm(label)
            except ValueError:
                return {}
            if not all(spacing_is_physical(label)):
                return {"spacing_mm": None, "miss_penalty_voxels": miss_penalty_mm(shape, spacing),
                        "spacing_note": _NO_SPACING_NOTE}
        return {"spacing_mm": list(spacing), "miss_penalty_mm": miss_penalty_mm(shape, spacing)}

    @staticmethod
    def _value(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    def __call__(self, engine: Engine) -> None:
        """Write one JSON per case."""
        details = {k: torch.as_tensor(v).reshape(len(self._files), -1) for k, v in engine.state.metric_details.items()}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        units = {metric: self.units[metric] for metric in details if metric in self.units}
        for i, (path, case) in enumerate(zip(self._files, case_names(self._files))):
            geometry = self._geometry[i] if i < len(self._geometry) else {}
            report: dict[str, Any] = {"image": path, **geometry}
            if units:  # a file without spacing was measured at 1 per voxel: say so instead of "mm"
                in_voxels = "spacing_note" in geometry
                report["units"] = {m: "voxel" if in_voxels and u == "mm" else u for m, u in units.items()}
            for metric, values in details.items():
                row = values[i].tolist()
                names = self.class_names or [f"class{c}" for c in range(len(row))]
                finite = [v for v in row if math.isfinite(v)]
                if units.get(metric) == COUNT_UNIT:
                    report[metric] = {n: int(round(v)) if math.isfinite(v) else None for n, v in zip(names, row)}
                    report[metric]["total"] = int(round(sum(finite)))
                    continue
                report[metric] = {n: self._value(v) for n, v in zip(names, row)}
                report[metric]["mean"] = sum(finite) / len(finite) if finite else None
            (self.output_dir / f"{case}_metrics.json").write_text(json.dumps(report, indent=2))
