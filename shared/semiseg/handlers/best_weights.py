"""Keep the weights of the best validation score (``model_best.pt``), chosen on the validation cases only.

SSL4MIS evaluates the weights of its best validation Dice (``train_*_3D.py``: ``{model}_best_model.pth``, tested by
``test_3D.py``); the bundles evaluate the final weights (``model.pt``), as UA-MT does. ``--save_best true`` keeps
both: :class:`BestWeightsSaver` is MONAI's ``CheckpointSaver(save_key_metric=True)`` (the project's
:class:`~semiseg.handlers.AtomicCheckpointSaver`: atomic, finite-only) on the validator, so it compares the
validator's key metric (``val_mean_dice``) after every validation and replaces ``model_best.pt`` when it is higher
(the first of equal scores stays, as SSL4MIS's ``>``). See docs/architecture.md §2, "Checkpoints".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from ignite.engine import Engine

from semiseg.errors import SettingError
from semiseg.handlers.checkpoint import AtomicCheckpointSaver
from semiseg.settings import flag

__all__ = ["BEST_FILENAME", "BestWeightsSaver", "check_best_weights"]

BEST_FILENAME = "model_best.pt"
"""The best-validation weights a run writes with ``--save_best true`` (beside ``model.pt``, the final ones)."""


def check_best_weights(save_best: Any, num_validation: int, filename: str = BEST_FILENAME) -> bool:
    """Refuse ``--save_best true`` without validation cases, before any data is read (``train.json``'s
    ``initialize``, with ``@num_val``).

    Args:
        save_best: bundle setting ``save_best``.
        num_validation: the number of validation cases (``@num_val``; the saver itself checks the validator's list).
        filename: the best-weights file, for the message.

    Returns:
        ``save_best`` as a bool.

    Raises:
        SettingError: when ``save_best`` is true and there is no validation case.
        ValueError: if ``save_best`` is not a boolean.
    """
    enabled = flag(save_best, "save_best")
    if enabled and num_validation < 1:
        raise SettingError(
            f"--save_best true keeps the weights of the best validation score in {filename}, but this run has no "
            "validation cases (num_val 0): set --num_val to 1 or more (validation cases are labelled training "
            "cases held out from training, never test cases), or leave save_best false (nothing was run)."
        )
    return enabled


def _images(data: Any) -> set[str]:
    """The image paths of a data list (items ``{"image": path, ...}``)."""
    if not isinstance(data, Sequence):
        return set()
    return {str(item["image"]) for item in data if isinstance(item, Mapping) and "image" in item}


class BestWeightsSaver(AtomicCheckpointSaver):
    """Write ``save_dict`` to ``<save_dir>/model_best.pt`` whenever the validator's key metric beats its best so far.

    Attach it to the validator (the template lists it in ``validate#handlers``; ``evaluate.json`` replaces that list,
    so an evaluation on the test cases never has it). It refuses, when attached, an evaluator that reads any test
    case, so the weights are chosen on the validation list and never on the test list. A NaN score (a validation set
    without the classes) counts as ``-inf``. Its state (the best score so far) goes into ``checkpoint.pt``
    (``checkpoint#objects#best_weights``), so a resumed run compares with the best of the whole run.

    Args:
        save_dir: the checkpoint folder (``@ckpt_dir``).
        save_dict: what to save, ``{"model": network}`` (a bare state dict, like ``model.pt``).
        enabled: bundle setting ``save_best``; ``false`` (default) attaches nothing and writes nothing.
        num_validation: the number of validation cases (``len(@datalist['validation'])``); ``save_best`` needs at
            least one.
        test_data: the test list (``@datalist['test']``), which the validator must not read.
        filename: the file name (:data:`BEST_FILENAME`).
        key_metric_name: the metric to compare; ``None`` takes the validator's key metric.
        kwargs: other :class:`~semiseg.handlers.AtomicCheckpointSaver` arguments (``name``, ``file_prefix``).

    Raises:
        SettingError: when enabled without validation cases.
        ValueError: if ``enabled`` is not a boolean.
    """

    def __init__(
        self,
        save_dir: str,
        save_dict: dict,
        enabled: Any = False,
        num_validation: int = 0,
        test_data: Sequence[Mapping[str, Any]] = (),
        filename: str = BEST_FILENAME,
        key_metric_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.enabled = check_best_weights(enabled, num_validation, filename)
        super().__init__(
            save_dir=save_dir,
            save_dict=save_dict,
            save_key_metric=True,
            key_metric_name=key_metric_name,
            key_metric_n_saved=1,
            key_metric_filename=filename,
            **kwargs,
        )
        self.filename = filename
        self.test_images = _images(test_data)
        checkpoint = self._key_metric_checkpoint
        assert checkpoint is not None and checkpoint.score_function is not None  # save_key_metric=True
        score = checkpoint.score_function

        def nan_as_lowest(engine: Engine) -> float:
            value = score(engine)
            return -math.inf if isinstance(value, numbers.Real) and math.isnan(value) else value

        checkpoint.score_function = nan_as_lowest

    @property
    def best_score(self) -> float | None:
        """The best key-metric value so far (None before the first validation)."""
        saved = self._key_metric_checkpoint._saved if self._key_metric_checkpoint is not None else []
        return float(saved[-1].priority) if saved else None

    def attach(self, engine: Engine) -> None:
        """Attach to the validator (nothing when disabled); refuse an evaluator that reads a test case.

        Raises:
            SettingError: when the evaluator's data set holds a test case.
        """
        if not self.enabled:
            return
        data = getattr(getattr(getattr(engine, "data_loader", None), "dataset", None), "data", None)
        shared = sorted(_images(data) & self.test_images)
        if shared:
            raise SettingError(
                f"{self.filename} would be chosen on test cases: the evaluator it is attached to reads {len(shared)} "
                f"test image(s) (first {shared[0]}). Attach BestWeightsSaver to the validator of train.json "
                "(validate#handlers), whose cases are the validation list; evaluate.json must not list it."
            )
        super().attach(engine)

    def metrics_completed(self, engine: Engine) -> None:
        """After a validation: replace the file when the key metric is higher than the best so far."""
        before = self.best_score
        if self._save(self._key_metric_checkpoint, engine):
            name = getattr(engine.state, "key_metric_name", None) or "key metric"
            self.logger.info(
                f"{self.filename}: validation at epoch {engine.state.epoch} scored {name} {self.best_score:.4f} "
                f"(best before: {'none' if before is None else f'{before:.4f}'}), weights saved."
            )

    def state_dict(self) -> dict:
        """The best score so far and its file (Ignite ``Checkpoint.state_dict``), for ``checkpoint.pt``."""
        assert self._key_metric_checkpoint is not None
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore the best score so far (a resumed run)."""
        assert self._key_metric_checkpoint is not None
        self._key_metric_checkpoint.load_state_dict(state_dict)
