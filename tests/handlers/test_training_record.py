"""TrainingRecordWriter: model.json beside model.pt holds the training voxel spacing that inference compares its
inputs with (docs/architecture.md §5); model.pt itself stays a bare state dict."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from ignite.engine import Engine

from semiseg.handlers import TrainingRecordWriter
from semiseg.handlers.training_record import training_spacing


def _image(path: Path, spacing: tuple[float, float, float]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([*spacing, 1.0])), str(path))
    return str(path)


def test_the_training_spacing_is_the_per_axis_median_of_the_images_that_store_one(tmp_path: Path) -> None:
    items = [{"image": _image(tmp_path / f"{i}.nii.gz", s)} for i, s in
             enumerate([(1.0, 1.0, 3.0), (0.8, 1.2, 2.0), (1.0, 0.9, 5.0)])]
    items.append({"image": str(tmp_path / "la" / "mri_norm2.h5") + "::image"})  # no spacing stored
    fields = training_spacing(items)
    assert fields["training_spacing_mm"] == [1.0, 1.0, 3.0]
    assert fields["spacing_min_mm"] == [0.8, 0.9, 2.0] and fields["spacing_max_mm"] == [1.0, 1.2, 5.0]
    assert (fields["images"], fields["images_without_spacing"], fields["axes"]) == (4, 1, "RAS")
    assert training_spacing([str(tmp_path / "x.npy")])["training_spacing_mm"] is None


def test_the_record_is_written_when_training_completes(tmp_path: Path) -> None:
    images = [_image(tmp_path / "a.nii.gz", (1.5, 1.5, 1.5))]
    writer = TrainingRecordWriter(tmp_path / "models", images)
    engine = Engine(lambda e, b: None)
    writer.attach(engine)
    (tmp_path / "models").mkdir()
    assert not (tmp_path / "models" / "model.json").exists()
    engine.run([0], max_epochs=1)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["weights"] == "model.pt" and record["training_spacing_mm"] == [1.5, 1.5, 1.5]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.json"]  # no temp file left
