"""``provenance.json`` next to evaluation and inference outputs: which bundle, checkpoint and command made them.

:class:`ProvenanceWriter` is an Ignite handler that ``evaluate.json`` and ``inference.json`` attach after their
checkpoint loader. It hashes the checkpoint (sha256) when it is built, before the run, and writes
``<output_dir>/provenance.json`` (atomically: a temporary file, then ``os.replace``) when the run starts, with
``"status": "started"``, and again when it completes, with ``"status": "completed"`` and the finish time. A file
still saying ``"started"`` marks outputs of a run that did not finish. The record::

    {"workflow": "inference", "status": "completed", "started": "...Z", "finished": "...Z", "cases": 8,
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
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import monai
import torch
from monai.utils import IgniteInfo, min_version, optional_import

from ..bundle_checks import check_overrides, cli_run_args

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


def _new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the process umask (which can only be read by setting it)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


SHIPPED = "the bundle's scripts/ (no semiseg installed)"


def _semiseg_version() -> str | None:
    """The installed semiseg's version; :data:`SHIPPED` when this module is the copy in a bundle zip."""
    if not __name__.startswith("semiseg."):
        return SHIPPED
    try:
        return importlib.metadata.version("semiseg")
    except importlib.metadata.PackageNotFoundError:
        return None


class ProvenanceWriter:
    """Write ``<output_dir>/provenance.json`` when an evaluation or inference run starts and when it completes.

    Attach it after the checkpoint loader (later in the handler list), so a checkpoint that fails to load leaves
    an existing ``provenance.json`` untouched.

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
            check_overrides(cli.config_file, cli.overrides, cli.tracking)
        self.path = os.path.join(os.fspath(output_dir), filename)
        meta = dict(metadata or {})
        self.record: dict[str, Any] = {
            "workflow": workflow,
            "status": "started",
            "started": None,
            "finished": None,
            "cases": None,
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
        """Write the record at ``STARTED`` and ``COMPLETED`` of ``engine``.

        Args:
            engine: the evaluator.
        """
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        """Record the start time and write ``"status": "started"``."""
        self.record.update(status="started", started=_now(), finished=None, cases=None)
        self.write()

    def completed(self, engine: Engine) -> None:
        """Record the finish time and the number of cases and write ``"status": "completed"``."""
        self.record.update(status="completed", finished=_now(), cases=int(engine.state.iteration))
        self.write()

    def write(self) -> None:
        """Write the record atomically (temporary file in the output folder, then ``os.replace``), readable as the
        outputs beside it are: mode ``0o666`` less the process umask (0644 under the usual umask 022), not the
        ``0o600`` of a temporary file."""
        folder = os.path.dirname(self.path) or "."
        os.makedirs(folder, exist_ok=True)
        text = json.dumps(self.record, indent=2, default=str) + "\n"
        fd, tmp = tempfile.mkstemp(prefix=".provenance-", suffix=".json", dir=folder)
        try:
            os.chmod(tmp, _new_file_mode())
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
