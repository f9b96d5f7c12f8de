"""The voxel spacing a network was trained at, recorded beside its weights, and the check an inference input gets.

A network trained at one voxel spacing segments an image at a very different one badly, and nothing fails. A
training run writes ``model.json`` beside ``model.pt`` when it completes
(:class:`semiseg.handlers.TrainingRecordWriter`; ``model.pt`` stays a bare state dict for MONAI Label and
``ckpt_export``)::

    {"weights": "model.pt", "training_spacing_mm": [1.5, 1.5, 1.5], "spacing_min_mm": [...], "spacing_max_mm": [...],
     "axes": "RAS", "images": 6, "images_without_spacing": 0, "written": "...Z"}

``training_spacing_mm`` is the per-axis median spacing of the training images (labelled and unlabelled), in the
order of the RAS axes the pre-processing orients every image to (null when no training image stores a spacing:
``.npy``, ``.h5``). Inference reads it (:func:`read_training_spacing`) and warns, one line per image, when an input's
spacing differs from it by more than a factor (2 by default) on any axis (:func:`spacing_mismatch`).

This module imports only numpy and the standard library, so it ships in a bundle zip (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "RECORD_FILE",
    "SPACING_FACTOR",
    "format_spacing",
    "ras_spacing",
    "read_training_spacing",
    "record_path",
    "spacing_mismatch",
]

RECORD_FILE = "model.json"
"""The record written beside ``model.pt`` in ``ckpt_dir``."""

SPACING_FACTOR = 2.0
"""Inputs whose spacing differs from the training spacing by more than this factor on an axis get a warning."""


def ras_spacing(affine: Any) -> tuple[float, float, float]:
    """The voxel spacing (mm) of an image along the world axes R, A, S, from its affine.

    Each voxel axis is assigned to the world axis its direction is closest to (the axis an ``Orientation("RAS")``
    transform moves it to), so a 1 x 1 x 3 mm image stored in another axis order gives the same spacing.

    Args:
        affine: the 4 x 4 (or 3 x 3 upper-left) voxel-to-world matrix.

    Returns:
        ``(R, A, S)`` spacings.
    """
    matrix = np.asarray(affine, dtype=np.float64)[:3, :3]
    sizes = np.linalg.norm(matrix, axis=0)
    out = [0.0, 0.0, 0.0]
    free = [0, 1, 2]
    weights = np.abs(matrix) / np.where(sizes > 0, sizes, 1.0)
    for voxel_axis in np.argsort(-weights.max(axis=0)):  # the most clearly aligned voxel axis chooses first
        world = max(free, key=lambda w: weights[w, voxel_axis])
        free.remove(world)
        out[world] = float(sizes[voxel_axis])
    return out[0], out[1], out[2]


def format_spacing(spacing: Sequence[float]) -> str:
    """``"1.5 x 1.5 x 3 mm"``."""
    return " x ".join(f"{float(s):.3g}" for s in spacing) + " mm"


def record_path(model_file: str | os.PathLike[str]) -> str:
    """``model.json`` beside a weights file (``models/model.pt`` -> ``models/model.json``)."""
    return os.path.join(os.path.dirname(os.path.abspath(os.fspath(model_file))), RECORD_FILE)


def read_training_spacing(path: str | os.PathLike[str] | None) -> tuple[float, float, float] | None:
    """The ``training_spacing_mm`` of a training record, or None when there is no record, it is unreadable, or the
    training images stored no spacing (inference then compares nothing)."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("training_spacing_mm")
        spacing = tuple(float(v) for v in value)
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        return None
    return spacing[0], spacing[1], spacing[2]


def spacing_mismatch(spacing: Sequence[float], training: Sequence[float], factor: float = SPACING_FACTOR) -> bool:
    """Whether ``spacing`` differs from ``training`` by more than ``factor`` (either way) on any axis."""
    for value, reference in zip(spacing, training):
        if value <= 0 or reference <= 0:
            continue
        ratio = value / reference
        if ratio > factor or ratio < 1.0 / factor:
            return True
    return False
