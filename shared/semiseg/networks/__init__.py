"""The bundles' segmentation networks, written once.

Every module here imports only torch, MONAI and the standard library, and imports its siblings relatively, so
``scripts/package_bundles.py`` can ship the ones a bundle's ``inference.json`` needs inside the bundle zip.
"""

from __future__ import annotations

from .bpl_head import FeatureTap, ThresholdHead
from .cps import SoftmaxAverage, init_conv_weights
from .deep_supervision import DeepSupervisionUNet
from .discriminator import FC3DDiscriminator
from .layer_ensembles import LayerEnsembles
from .ssl4mis_unet import UNet3D, UNet3DPyramid
from .ssl4mis_vnet import VNet, vnet
from .ugpcl_net import UGPCLNet
from .unet_factory import unet

__all__ = ["DeepSupervisionUNet", "VNet", "unet", "vnet", "FC3DDiscriminator", "SoftmaxAverage", "init_conv_weights",
           "FeatureTap", "ThresholdHead"]
__all__ += ["LayerEnsembles"]
__all__ += ["UGPCLNet"]
__all__ += ["UNet3D", "UNet3DPyramid"]
