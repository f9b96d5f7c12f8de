"""A terminal progress bar for training and inference runs: Ignite's ``ProgressBar`` (tqdm), only where it helps.

``train.json`` and ``inference.json`` attach :class:`TerminalProgressBar` with ``enabled: @progress``. The bar is
drawn only in an interactive terminal (standard output and standard error both TTYs) and, under ``torchrun``, on
rank 0 alone, so CI logs, ``nohup`` runs and log files stay plain text; ``--progress true`` forces it,
``--progress false`` turns it off (read by :func:`semiseg.settings.flag_or_auto`: also 1/0, yes/no, ``auto``).
The bar shows iterations per epoch and never reads the loss (which would wait on the device every iteration);
losses stay in the log and TensorBoard.

This module imports only torch, MONAI and the standard library (Ignite and tqdm through MONAI's
``optional_import``), so it ships in a released bundle zip (``scripts/package_bundles.py``), where tqdm may be
missing: "MONAI alone" (``pip install "monai[fire,ignite,nibabel]==1.6.1"`` plus torch) does not install it, and a
forced bar then logs one line and the run goes on without it. See docs/architecture.md §5.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from ..settings import flag_or_auto

ProgressBar, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "ProgressBar")
_, HAS_TQDM = optional_import("tqdm")

__all__ = ["TerminalProgressBar", "progress_enabled"]

logger = logging.getLogger(__name__)


def _is_tty(stream: IO[str] | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_enabled(setting: bool | str | None, streams: tuple[IO[str] | None, ...] | None = None) -> bool:
    """Whether a progress bar is wanted for this setting, before checking rank and tqdm.

    Args:
        setting: None / ``"auto"`` (in a terminal), or on / off as :func:`semiseg.settings.flag_or_auto` reads it
            (``true``, ``false``, 1, 0, ``yes``, ``no``, any case, as the command line passes them).
        streams: the streams that must be terminals for ``None``/``"auto"`` (default standard output and error).

    Returns:
        True for ``True``/``"true"``; False for ``False``/``"false"``; for ``None``/``"auto"``, whether every stream
        is a TTY.

    Raises:
        SettingError: for any other value, naming the setting.
    """
    value = flag_or_auto(setting, "progress")
    if value is None:
        return all(_is_tty(s) for s in (streams if streams is not None else (sys.stdout, sys.stderr)))
    return value


class TerminalProgressBar:
    """Attach Ignite's ``ProgressBar`` to an engine when :func:`progress_enabled`, on rank 0, and tqdm is there.

    Args:
        enabled: the ``progress`` setting (see :func:`progress_enabled`).
        desc: the bar's label (e.g. ``"train"``, ``"inference"``).
        kwargs: more ``ProgressBar`` arguments (``bar_format``, ``persist``, ...).

    Raises:
        SettingError: for an ``enabled`` that is not on, off or auto (see :func:`progress_enabled`).
    """

    def __init__(self, enabled: bool | str | None = None, desc: str | None = None, **kwargs: Any) -> None:
        self.wanted = progress_enabled(enabled)
        self.desc = desc
        self.kwargs = kwargs
        self.bar: Any = None

    def attach(self, engine: Any) -> None:
        """Attach the bar (iteration events, closed at each epoch's end) when it is wanted and can be drawn."""
        if not self.wanted:
            return
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_rank():
            return
        if not HAS_TQDM:
            logger.info("progress bar off: tqdm is not installed (pip install tqdm to see one)")
            return
        self.bar = ProgressBar(desc=self.desc, **self.kwargs)
        self.bar.attach(engine)
