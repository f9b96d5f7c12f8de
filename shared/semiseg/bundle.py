"""Run a repository bundle the way a user does (``python -m monai.bundle run ...``), for scripts and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["REPO_ROOT", "bundle_command", "run_bundle"]

REPO_ROOT = Path(__file__).resolve().parents[2]


def bundle_command(
    bundle: str, run_id: str | None, configs: Sequence[str] = ("train.json",), overrides: Mapping | None = None
) -> list[str]:
    """The ``python -m monai.bundle run`` command line for ``bundles/<bundle>/configs/<configs>``.

    Args:
        bundle: bundle folder name.
        run_id: ``"training"`` or None (the config's ``run``).
        configs: config files merged in order.
        overrides: ``--key value`` pairs; lists are passed as JSON.

    Returns:
        The argument list.
    """
    paths = [str(REPO_ROOT / "bundles" / bundle / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run"] + ([run_id] if run_id else [])
    cmd += ["--config_file", paths[0] if len(paths) == 1 else str(paths)]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", json.dumps(value) if isinstance(value, (list, tuple)) else str(value)]
    return cmd


def run_bundle(
    bundle: str,
    run_id: str | None,
    configs: Sequence[str] = ("train.json",),
    overrides: Mapping | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> float:
    """Run a bundle workflow in a subprocess from the repository root; output streams to the console or a log.

    Args:
        bundle: bundle folder name.
        run_id: ``"training"`` or None.
        configs: config files merged in order.
        overrides: ``--key value`` pairs.
        log_file: write stdout/stderr there instead of the console.

    Returns:
        Wall time in seconds.

    Raises:
        RuntimeError: if the workflow fails, naming the command (and the log file).
    """
    cmd = bundle_command(bundle, run_id, configs, overrides)
    start = time.time()
    if log_file is None:
        result = subprocess.run(cmd, cwd=REPO_ROOT)
    else:
        with open(log_file, "w") as log:
            result = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        where = f" (log: {log_file})" if log_file else ""
        raise RuntimeError(f"bundle {bundle} failed with exit code {result.returncode}{where}: {' '.join(cmd)}")
    return time.time() - start
