"""semiseg: the shared package behind the semiseg MONAI bundles for semi-supervised 3D segmentation.

Importing ``semiseg`` imports its subpackages, so a bundle config needs one ``"$import semiseg"`` to reference
``semiseg.methods.MeanTeacherMethod``, ``semiseg.handlers.EMATeacher`` and so on.
"""

from __future__ import annotations

from . import data, engines, handlers, inference, keys, losses, methods, metrics, networks, ramps, reporting

__version__ = "0.1.0"

__all__ = [
    "data", "engines", "handlers", "inference", "keys", "losses", "methods", "metrics", "networks", "ramps",
    "reporting", "__version__",
]
