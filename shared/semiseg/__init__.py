"""semiseg: the shared package behind the semiseg MONAI bundles for semi-supervised 3D segmentation."""

from __future__ import annotations

__version__ = "0.1.0"
