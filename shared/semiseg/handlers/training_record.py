"""``model.json`` beside ``model.pt``: the voxel spacing the network was trained at (:mod:`semiseg.inference.spacing`).

``model.pt`` stays a bare state dict (what MONAI Label loads into ``@network`` and ``ckpt_export`` reads), so what
inference needs to know about the training data goes into a record beside it. Inference warns when an input's
spacing differs from the recorded one by more than a factor of 2 (:func:`semiseg.inference.inference_images`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events

from semiseg.files import write_atomic
from semiseg.handlers.checkpoint import TEMP_PREFIX, TEMP_SUFFIX
from semiseg.inference.spacing import RECORD_FILE, ras_spacing

__all__ = ["TrainingRecordWriter", "image_spacing", "training_spacing"]

logger = logging.getLogger(__name__)


def image_spacing(path: str) -> tuple[float, float, float] | None:
    """The RAS voxel spacing (mm) stored in a NIfTI image's header (read without its voxels), or None for files
    that store none (``.npy``, ``.h5``) or cannot be read."""
    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    import nibabel as nib

    try:
        return ras_spacing(nib.load(path).affine)
    except Exception:  # the data checks name unreadable files; a record without them is still right
        return None


def training_spacing(items: Sequence[Mapping[str, Any] | str], key: str = "image") -> dict[str, Any]:
    """The spacing fields of the training record for the images of ``items``.

    Args:
        items: data list items (``{"image": path, ...}``) or paths.
        key: the image key.

    Returns:
        ``training_spacing_mm`` (per-axis median, RAS order; None when no image stores a spacing),
        ``spacing_min_mm``, ``spacing_max_mm``, ``axes``, ``images`` and ``images_without_spacing``.
    """
    paths = [str(item[key]) if isinstance(item, Mapping) else str(item) for item in items]
    found = [s for s in (image_spacing(p) for p in paths) if s is not None]
    array = np.asarray(found, dtype=np.float64).reshape(-1, 3)

    def rounded(values: np.ndarray) -> list[float] | None:
        return [round(float(v), 6) for v in values] if len(found) else None

    return {
        "training_spacing_mm": rounded(np.median(array, axis=0)) if found else None,
        "spacing_min_mm": rounded(array.min(axis=0)) if found else None,
        "spacing_max_mm": rounded(array.max(axis=0)) if found else None,
        "axes": "RAS",
        "images": len(paths),
        "images_without_spacing": len(paths) - len(found),
    }


class TrainingRecordWriter:
    """Write ``<ckpt_dir>/model.json`` when training completes (rank 0), atomically, beside ``model.pt``.

    Args:
        ckpt_dir: the checkpoint folder (``@ckpt_dir``).
        images: the training images, labelled and unlabelled (``$@datalist['labelled'] + @datalist['unlabelled']``).
        weights: the weights file the record describes.
        filename: the record's name.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike[str],
        images: Sequence[Mapping[str, Any] | str],
        weights: str = "model.pt",
        filename: str = RECORD_FILE,
    ) -> None:
        self.path = os.path.join(os.fspath(ckpt_dir), filename)
        self.images = list(images)
        self.weights = weights

    def attach(self, engine: Engine) -> None:
        """Write the record at ``COMPLETED``."""
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def record(self) -> dict[str, Any]:
        """The record's content."""
        written = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"weights": self.weights, **training_spacing(self.images), "written": written}

    def __call__(self, engine: Engine | None = None) -> None:
        """Write the record (rank 0 only)."""
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        text = json.dumps(self.record(), indent=2) + "\n"
        write_atomic(self.path, text.encode("utf-8"), f"{TEMP_PREFIX}{os.path.basename(self.path)}.", TEMP_SUFFIX)
        logger.info(f"wrote {self.path} (the training spacing inference compares its inputs with).")
