"""Atomic checkpoints: MONAI's CheckpointSaver with every file written to a temp file and renamed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class _AtomicDiskSaver(DiskSaver):
    """Ignite's atomic ``DiskSaver`` (temp file + ``os.replace``) with an optional fixed file name.

    With a fixed name, ``remove`` is a no-op: the next save replaces the file atomically, so there is never a
    moment without a checkpoint on disk (MONAI's saver deletes the old file first).
    """

    def __init__(self, dirname: str, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, require_empty=False, atomic=True, create_dir=True)
        self.filename = filename

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint=checkpoint, filename=self.filename or filename, metadata=metadata)

    def remove(self, filename: str) -> None:
        if self.filename is None and os.path.exists(os.path.join(self.dirname, filename)):
            super().remove(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically.

    MONAI's saver writes in place (``atomic=False``), so a crash during ``torch.save`` leaves a truncated file in
    place of the last good checkpoint. This subclass keeps MONAI's arguments and behaviour and swaps the save
    handler for Ignite's atomic one. ``interval_filename`` gives the interval checkpoint a fixed name (e.g.
    ``checkpoint.pt``, the file ``resume`` loads); the default keeps MONAI's ``..._epoch=N.pt`` naming.

    Args:
        interval_filename: fixed file name for interval checkpoints (use with ``n_saved=1``).
        kwargs: ``monai.handlers.CheckpointSaver`` arguments.
    """

    def __init__(self, interval_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        fixed = {
            "_final_checkpoint": kwargs.get("final_filename"),
            "_key_metric_checkpoint": kwargs.get("key_metric_filename"),
            "_interval_checkpoint": interval_filename,
        }
        for attr, filename in fixed.items():
            checkpoint = getattr(self, attr)
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, filename)
