"""semiseg: the shared package behind the semiseg MONAI bundles for semi-supervised 3D segmentation.

Importing ``semiseg`` imports its subpackages, so a bundle config needs one ``"$import semiseg"`` to reference
``semiseg.methods.MeanTeacherMethod``, ``semiseg.handlers.EMATeacher`` and so on. Importing it also installs the
one-line report of a failed bundle run (:mod:`semiseg.errors`).
"""

from __future__ import annotations

from . import (
    bundle_checks,
    data,
    engines,
    errors,
    handlers,
    inference,
    keys,
    losses,
    methods,
    metrics,
    networks,
    ramps,
    reporting,
    settings,
    threads,
    weights,
)

__version__ = "0.1.0"

__all__ = [
    "bundle_checks", "errors",
    "data", "engines", "handlers", "inference", "keys", "losses", "methods", "metrics", "networks", "ramps",
    "reporting", "settings", "threads", "weights", "__version__",
]
