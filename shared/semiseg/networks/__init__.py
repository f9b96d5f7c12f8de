"""The bundles' segmentation networks, written once.

Every module here imports only torch, MONAI and the standard library, and imports its siblings relatively, so
``scripts/package_bundles.py`` can ship the ones a bundle's ``inference.json`` needs inside the bundle zip.
"""

from __future__ import annotations

from .deep_supervision import DeepSupervisionUNet
from .ssl4mis_vnet import VNet, vnet
from .unet_factory import unet

__all__ = ["DeepSupervisionUNet", "VNet", "unet", "vnet"]
