"""The template's ``data_device`` setting in a bundle: the device-style loaders, run on the CPU (``"cpu"``)."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, run
from monai.data import ThreadDataLoader

from tests.bundles.conftest import bundle_overrides, config
from tests.helpers import states_equal


def _overrides(tiny_demo: Path, out: Path, **extra) -> dict:
    return bundle_overrides(tiny_demo, out, data_device="cpu", rot90=True, max_iterations=6, iterations_per_epoch=2,
                            val_interval=10, **extra)


def test_mean_teacher_on_the_device_style_loaders_resumes_bitwise_equal(tiny_demo: Path, tmp_path: Path) -> None:
    """Stopped after its 2nd epoch (iteration 4 of 6) and resumed with ``--resume true``: the student and the teacher
    equal the uninterrupted run's, although the loaders' thread had prepared the next batches when the checkpoint
    was written (dropout, teacher noise, shuffling, crops, quarter turns and flips all replayed)."""
    run("training", config_file=config("mean_teacher", "train.json"), **_overrides(tiny_demo, tmp_path / "whole"))

    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "train.json"))
    parser.update(_overrides(tiny_demo, tmp_path / "stopped"))
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.train_data_loader, ThreadDataLoader)
    assert isinstance(trainer.unlabelled_data_loader, ThreadDataLoader)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())
    trainer.run()
    models = tmp_path / "stopped" / "models"
    assert torch.load(models / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 4

    run("training", config_file=config("mean_teacher", "train.json"), resume="true",
        **_overrides(tiny_demo, tmp_path / "stopped"))
    for name in ("model.pt", "teacher.pt"):
        whole = torch.load(tmp_path / "whole" / "models" / name, weights_only=True)
        resumed = torch.load(models / name, weights_only=True)
        assert states_equal(whole, resumed), name
    assert torch.load(models / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 6
