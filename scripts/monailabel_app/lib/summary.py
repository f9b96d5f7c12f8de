"""What a MONAI Label training run actually did, written where the app and its tests can read it."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from semiseg.engines.outputs import image_filenames
from semiseg.handlers import run_budget


class TrainingSummary:
    """Write ``output_file`` (JSON) when the run completes: the data lists it was given, the unlabelled files its
    batches drew, the budget it ran and the schedules' values at the end.

    The lists are those the app's train task built from MONAI Label's datastore (``labelled``: images with a final
    label; ``unlabelled``: the other images), so a reader can check that a semi-supervised bundle trained on
    MONAI Label's unlabelled images and that its ramp and learning-rate schedule spanned the budget that ran
    (``max_epochs x epoch_length``; docs/architecture.md §2, "Budgets and the hot loop").

    Args:
        output_file: the JSON file (its folder is created).
        labelled: labelled image paths given to the run.
        unlabelled: unlabelled image paths given to the run.
        validation: validation image paths.
    """

    def __init__(
        self,
        output_file: str | os.PathLike[str],
        labelled: Sequence[str],
        unlabelled: Sequence[str],
        validation: Sequence[str] = (),
    ) -> None:
        self.output_file = Path(output_file)
        self.lists = {"labelled": list(labelled), "unlabelled": list(unlabelled), "validation": list(validation)}
        self.drawn: set[str] = set()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _record(self, engine: Engine) -> None:
        batch = getattr(engine, "_unlabelled_batch", None)  # the SemiSupervisedTrainer's current unlabelled batch
        if batch is not None:
            self.drawn.update(os.path.realpath(f) for f in image_filenames(batch))

    def _write(self, engine: Engine) -> None:
        state: Any = engine.state
        optimizer = getattr(engine, "optimizer", None)
        summary = {
            "counts": {name: len(items) for name, items in self.lists.items()},
            **self.lists,
            "unlabelled_drawn": sorted(self.drawn),
            "iterations": int(state.iteration),
            "max_epochs": int(state.max_epochs),
            "epoch_length": int(state.epoch_length),
            "budget": run_budget(engine),
            "consistency_weight": getattr(state, "consistency_weight", None),
            "learning_rate": optimizer.param_groups[0]["lr"] if optimizer is not None else None,
        }
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        self.output_file.write_text(json.dumps(summary, indent=1, default=float) + "\n")
