"""``provenance.json`` next to evaluation and inference outputs: which bundle, checkpoint and command made them.

:class:`ProvenanceWriter` is an Ignite handler that ``evaluate.json`` and ``inference.json`` attach after their
checkpoint loaders. When it is built, before the run, it hashes the checkpoint (sha256) and checks that
``output_dir`` can be written (:func:`semiseg.files.check_writable`, without creating it). Nothing in ``output_dir``
changes until every check has passed: the inputs (checked when the data list is built), the settings, the output
folder and the weights (loaded at ``STARTED``). Then it writes ``<output_dir>/provenance.json`` (atomically: a
temporary file, then ``os.replace``) with ``"status": "started"`` when the first epoch starts, again after every case
with the cases written so far, and at the end with ``"status": "completed"``, or ``"status": "failed"`` and the
error's one-line message when the run stops on an error. A file still saying ``"started"`` marks outputs of a run
that was killed. Outputs an earlier run wrote into the same folder stay; ``inputs`` says which cases this run
wrote. The record::

    {"workflow": "inference", "status": "completed", "started": "...Z", "finished": "...Z", "cases": 8,
     "inputs": ["/abs/imagesTs/test_000.nii.gz", ...],     # the cases written, in order
     "error": null,                                        # "failed": the error's first line
     "bundle": {"name": ..., "version": ...},              # from the bundle's metadata.json
     "checkpoint": {"path": "/abs/models/model.pt", "sha256": "...", "bytes": 1234},
     "command": {"argv": [...], "overrides": {"dataset_dir": "..."}},   # overrides: only for `monai.bundle run`
     "settings": {...},                                    # the config values the config passes, resolved
     "versions": {"semiseg": ..., "monai": ..., "torch": ..., "python": ...}}

``versions.semiseg`` says ``"the bundle's scripts/ (no semiseg installed)"`` when the record is written by the copy
shipped in a bundle zip (inference with MONAI alone). This module imports only
torch, MONAI and the standard library (and semiseg modules relatively), so it ships in a bundle zip
(``scripts/package_bundles.py``). See docs/architecture.md §5.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import monai
import torch
from monai.utils import IgniteInfo, min_version, optional_import

from ..bundle_checks import check_overrides, cli_run_args
from ..errors import format_user_error, user_error
from ..files import check_writable, write_atomic

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["PROVENANCE_FILE", "SHIPPED", "ProvenanceWriter", "file_sha256"]

PROVENANCE_FILE = "provenance.json"
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file's bytes, as hex.

    Args:
        path: the file.

    Returns:
        64 hex digits.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


SHIPPED = "the bundle's scripts/ (no semiseg installed)"


def _semiseg_version() -> str | None:
    """The installed semiseg's version; :data:`SHIPPED` when this module is the copy in a bundle zip."""
    if not __name__.startswith("semiseg."):
        return SHIPPED
    try:
        return importlib.metadata.version("semiseg")
    except importlib.metadata.PackageNotFoundError:
        return None


def _error_line(error: BaseException) -> str:
    """The first line of what the command line reports for ``error`` (:mod:`semiseg.errors`)."""
    found = user_error(error) if isinstance(error, Exception) else None
    if found is not None:
        return format_user_error(found).splitlines()[0]
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _case_files(engine: Engine) -> list[str]:
    """The input files of the batch the engine just processed (``filename_or_obj`` of each item's image)."""
    batch = engine.state.batch
    items = batch if isinstance(batch, list) else [batch]
    files: list[str] = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        image = item.get("image")
        meta = getattr(image, "meta", None) or item.get("image_meta_dict") or {}
        name = meta.get("filename_or_obj")
        if isinstance(name, (list, tuple)):  # a collated batch
            files.extend(str(n) for n in name)
        elif name is not None:
            files.append(str(name))
    return files


class ProvenanceWriter:
    """Write ``<output_dir>/provenance.json`` as an evaluation or inference run starts, after every case, and at its
    end (completed or failed).

    Attach it after the checkpoint loaders (later in the handler list): the record is first written when the first
    epoch starts, after every ``STARTED`` handler, so a checkpoint that fails to load leaves an existing
    ``provenance.json`` untouched.

    Args:
        output_dir: where the run writes its outputs (``@output_dir``).
        checkpoint: the weights the run loads (``$@ckpt_dir + '/model.pt'``).
        metadata: the bundle's metadata (``@_meta_``); its ``name`` and ``version`` are recorded.
        settings: config values to record (``{"dataset_dir": "@dataset_dir", ...}``); anything JSON cannot hold is
            written as ``str(value)``.
        workflow: ``"inference"`` or ``"evaluate"``.
        filename: the record's file name.

    Raises:
        FileNotFoundError: if ``checkpoint`` is not a file (before the run, so nothing is written).
        WriteError: if ``output_dir`` cannot be written (read-only, full disk), naming it and the ``errno``.
        SettingError: when run as ``python -m monai.bundle run``, for an override naming no id of the config files
            (:func:`~semiseg.bundle_checks.check_overrides`; ``evaluate.json`` has no ``initialize`` check of its own).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        checkpoint: str | os.PathLike[str],
        metadata: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        workflow: str = "inference",
        filename: str = PROVENANCE_FILE,
    ) -> None:
        path = os.path.abspath(os.fspath(checkpoint))
        if not os.path.isfile(path):
            folder = os.path.dirname(path)
            raise FileNotFoundError(
                f"checkpoint {path} does not exist: train the bundle first, or pass --ckpt_dir with the folder "
                f"holding {os.path.basename(path)} ({workflow} needs its weights; nothing was written)"
                + ("" if os.path.isdir(folder) else f"; the folder {folder} does not exist either")
            )
        cli = cli_run_args()
        if cli is not None and cli.config_file is not None and cli.overrides:
            # a record of overrides that did nothing would mislead (evaluate.json has no initialize check of its own)
            check_overrides(cli.config_file, cli.overrides, cli.tracking, from_command_line=True)
        check_writable(output_dir, "output_dir", create=False)
        self.path = os.path.join(os.fspath(output_dir), filename)
        self._started = False
        meta = dict(metadata or {})
        self.record: dict[str, Any] = {
            "workflow": workflow,
            "status": "started",
            "started": None,
            "finished": None,
            "cases": None,
            "inputs": [],
            "error": None,
            "bundle": {"name": meta.get("name"), "version": meta.get("version")},
            "checkpoint": {"path": path, "sha256": file_sha256(path), "bytes": os.path.getsize(path)},
            "command": {"argv": list(sys.argv), "overrides": None if cli is None else dict(cli.overrides)},
            "settings": dict(settings or {}),
            "versions": {
                "semiseg": _semiseg_version(),
                "monai": monai.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }

    def attach(self, engine: Engine) -> None:
        """Write the record when the first epoch starts, after every case, at ``COMPLETED`` and on an error.

        The error handler runs first among ``EXCEPTION_RAISED`` handlers (Ignite stops at the first that re-raises)
        and re-raises the error.

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.EPOCH_STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.case_written)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        handlers = engine._event_handlers[Events.EXCEPTION_RAISED]
        handlers.insert(0, handlers.pop())

    def reset(self, engine: Engine | None = None) -> None:
        """A new run: nothing written yet."""
        self._started = False
        self.record.update(status="started", started=None, finished=None, cases=None, inputs=[], error=None)

    def started(self, engine: Engine) -> None:
        """Record the start time and write ``"status": "started"`` (once per run)."""
        if self._started:
            return
        self._started = True
        self.record.update(status="started", started=_now(), finished=None, cases=0, inputs=[], error=None)
        self.write()

    def case_written(self, engine: Engine) -> None:
        """Add the case just written and write the record."""
        self.record["inputs"].extend(_case_files(engine))
        self.record["cases"] = int(engine.state.iteration)
        self.write()

    def completed(self, engine: Engine) -> None:
        """Record the finish time and the number of cases and write ``"status": "completed"``."""
        self.record.update(status="completed", finished=_now(), cases=int(engine.state.iteration))
        self.write()

    def failed(self, engine: Engine, error: BaseException) -> None:
        """Write ``"status": "failed"`` with the error's first line (only once the record was started: a run that
        failed its checks leaves ``output_dir`` as it was), then re-raise ``error``."""
        if self._started and self.record["status"] != "failed":
            self.record.update(status="failed", finished=_now(), error=_error_line(error))
            try:
                self.write()
            except OSError:  # never hide the error that stopped the run
                pass
        raise error

    def write(self) -> None:
        """Write the record atomically (temporary file in the output folder, then ``os.replace``), readable as the
        outputs beside it are: mode ``0o666`` less the process umask (0644 under the usual umask 022), not the
        ``0o600`` of a temporary file."""
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        text = json.dumps(self.record, indent=2, default=str) + "\n"
        write_atomic(self.path, text.encode("utf-8"), ".provenance-", ".json")
