"""What a training run was started with, saved in ``checkpoint.pt``, so that ``--resume true`` can refuse what it
cannot honour.

A resumed run restores the optimiser, the schedules, the teacher, the ramps and the random generators from
``checkpoint.pt``: ``--resume true --learning_rate 0.5`` would be logged and then ignored (the restored optimiser
keeps 0.01), and another ``roi_size``, ``num_classes`` or consistency weight would give a run that is neither the
old one nor the new one. :class:`RunRecord` sits in ``checkpoint#objects`` (Ignite saves and loads it like the
other stateful objects) and holds the bundle's name and the value of every top-level setting of ``train.json``
(``make configs`` lists them: ``semiseg.bundle_config``); :func:`check_resume`, an ``initialize`` step of
``train.json``, reads ``checkpoint.pt`` before the data are read or cached and refuses, in one line naming the file
and the setting, a checkpoint that

- is missing, empty, truncated or corrupt, or not a training checkpoint (:mod:`semiseg.checkpoint_files`);
- was written by another bundle, or before run records existed (nothing to compare with);
- was trained with another value of a setting outside :attr:`RunRecord.may_change` (default
  :data:`MAY_CHANGE`): learning rate, momentum, weight decay, ``roi_size``, ``num_classes``, the method's
  hyper-parameters, ...;
- holds weights that do not fit the network (another class count or network: a checkpoint copied by hand);
- is at an iteration beyond ``max_iterations``.

Settings in :data:`MAY_CHANGE` are honoured by a resumed run: a larger (or smaller, but not below the saved
iteration) ``max_iterations`` is the new budget every schedule follows (docs/architecture.md §2), validation and
logging intervals, workers, caching and the sliding window apply to what is left. ``load_state_dict`` compares
again, for runs that load ``checkpoint.pt`` without the ``initialize`` step (an in-process ``CheckpointLoader``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..checkpoint_files import CheckpointFileError, read_checkpoint, state_dict_problem
from ..errors import SettingError
from ..settings import flag, is_flag

__all__ = ["MAY_CHANGE", "RunRecord", "check_resume"]

logger = logging.getLogger(__name__)

MAY_CHANGE = (
    "max_iterations", "iterations_per_epoch", "val_interval", "log_every", "progress", "num_workers", "cache_rate",
    "unlabelled_cache_num", "sw_batch_size", "overlap", "blend_mode", "dataset_dir", "resume", "overwrite", "init_from",
    "init_strict", "is_main_process",
)
"""Settings a resumed run may change: the budget, what happens next (validation, logging, loading, the sliding
window), paths, and the start-up flags (``init_from`` weights are replaced by the checkpoint's)."""


def _plain(value: Any) -> Any:
    """A copy made of JSON types (tuples become lists), which ``torch.load(weights_only=True)`` reads back."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _same(saved: Any, current: Any) -> bool:
    """Whether two setting values mean the same: booleans as :func:`semiseg.settings.flag` reads them (``"false"``
    from the command line equals ``false`` from the config), numbers by value, lists item by item."""
    if isinstance(saved, bool) or isinstance(current, bool):
        return is_flag(saved) and is_flag(current) and flag(saved, "") == flag(current, "")
    if isinstance(saved, list) and isinstance(current, list):
        return len(saved) == len(current) and all(_same(a, b) for a, b in zip(saved, current))
    return saved == current


class RunRecord:
    """The bundle and settings a training run started with; an Ignite stateful object for ``checkpoint#objects``.

    Args:
        bundle: the bundle's name (``bundles/<name>``).
        settings: ``{id: value}`` of the run's top-level settings (``"@id"`` references in the config).
        may_change: settings a resumed run may change (default :data:`MAY_CHANGE`).

    Raises:
        SettingError: from :meth:`load_state_dict`, when the saved record differs from this run's.
    """

    def __init__(self, bundle: str, settings: Mapping[str, Any], may_change: Sequence[str] = MAY_CHANGE) -> None:
        self.bundle = str(bundle)
        self.settings = _plain(dict(settings))
        self.may_change = tuple(may_change)

    def state_dict(self) -> dict[str, Any]:
        """``{"bundle": name, "settings": {id: value}}``, loadable with ``torch.load(..., weights_only=True)``."""
        return {"bundle": self.bundle, "settings": dict(self.settings)}

    def differences(self, state: Mapping[str, Any], where: str = "checkpoint.pt") -> list[str]:
        """What this run sets differently from the run that saved ``state``, one line per problem.

        Settings only one side has (a bundle version that added or removed one) are logged, not refused.

        Args:
            state: a saved :meth:`state_dict`.
            where: the checkpoint file, for the messages.

        Returns:
            Problems: another bundle; each setting outside :attr:`may_change` whose value differs.
        """
        saved_bundle = state.get("bundle")
        if saved_bundle != self.bundle:
            return [
                f"--resume true: {where} was written by the {saved_bundle!r} bundle, not {self.bundle!r}: point "
                "--ckpt_dir at this bundle's checkpoint folder, or train afresh (nothing was run)."
            ]
        saved = state.get("settings")
        saved = saved if isinstance(saved, Mapping) else {}
        problems = []
        for name, value in self.settings.items():
            if name in self.may_change or name not in saved:
                continue
            if not _same(saved[name], value):
                problems.append(
                    f"--resume true: {where} was trained with {name}={saved[name]!r}, this run sets {value!r}; a "
                    "resumed run continues the saved state (optimiser, schedules, method state), so it cannot honour "
                    f"the change: pass --{name} {_cli(saved[name])} to continue, or train afresh with --overwrite "
                    f"true (a resume may change {', '.join(self.may_change[:3])}, ...) (nothing was run)."
                )
        one_sided = sorted(set(saved) ^ set(self.settings))
        if one_sided:
            logger.warning(f"{where}: settings only one of the saved run and this run has, not compared: {one_sided}")
        return problems

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Compare the saved record with this run's (:meth:`differences`).

        Raises:
            SettingError: listing the differences.
        """
        problems = self.differences(state)
        if problems:
            raise SettingError(problems)


def _cli(value: Any) -> str:
    """How a setting's value is written on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "None"  # what the command line (Python Fire) reads as null
    if isinstance(value, list):
        return f'"{value}"'
    return str(value)


def check_resume(checkpoint_file: str | os.PathLike[str], record: RunRecord, network: torch.nn.Module,
                 max_iterations: int) -> bool:
    """Refuse, before any data is read, a ``--resume true`` from a checkpoint this run cannot continue.

    Call it only when resuming (the config writes ``... if semiseg.settings.flag(@resume, 'resume') else None``).

    Args:
        checkpoint_file: ``@ckpt_dir/checkpoint.pt``.
        record: this run's ``@run_record``.
        network: this run's ``@network`` (the saved ``model`` must fit it).
        max_iterations: this run's budget; the checkpoint's iteration must not be beyond it.

    Returns:
        True (a value for the ``initialize`` list).

    Raises:
        CheckpointFileError: the file is missing, empty, unreadable, not a training checkpoint, written before run
            records existed, or its weights do not fit ``network``.
        SettingError: another bundle, a setting the resumed run cannot honour, or ``max_iterations`` below the saved
            iteration; every problem found is listed.
    """
    path = os.path.abspath(os.fspath(checkpoint_file))
    checkpoint = read_checkpoint(path, "--resume true: checkpoint")
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("trainer"), Mapping) or "model" not in \
            checkpoint:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise CheckpointFileError(
            f"--resume true: {path} is not a training checkpoint (it holds {found}; a training run's checkpoint.pt "
            "holds model, optimizer, trainer, ...): point --ckpt_dir at the folder of the run to continue "
            "(nothing was run)."
        )
    saved = checkpoint.get("run_record")
    if not isinstance(saved, Mapping):
        raise CheckpointFileError(
            f"--resume true: {path} has no record of the bundle and settings it was trained with (written by another "
            "tool, or by a semiseg from before checkpoints recorded them), so it cannot be checked against this run: "
            "continue it with the semiseg version that wrote it, or train afresh with --overwrite true (nothing was "
            "run)."
        )
    if saved.get("bundle") != record.bundle:
        raise SettingError(record.differences(saved, path))
    problems = record.differences(saved, path)
    weights = None if problems else state_dict_problem(checkpoint["model"], network, path, what="model weights in")
    if weights is not None:  # settings that differ explain it already
        problems.append(f"--resume true: {weights} (nothing was run)")
    iteration = checkpoint["trainer"].get("iteration")
    if isinstance(iteration, int) and isinstance(max_iterations, int) and iteration > max_iterations:
        problems.append(
            f"--resume true: {path} is at iteration {iteration}, beyond --max_iterations {max_iterations}: pass "
            f"--max_iterations {iteration} or more to continue it (its model.pt is written when the budget is "
            "reached) (nothing was run)."
        )
    if problems:
        raise SettingError(problems)
    return True
