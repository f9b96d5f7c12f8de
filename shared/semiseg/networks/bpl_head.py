"""The threshold-posterior head of Bayesian Pseudo Labels and the hook that feeds it decoder features.

Xu et al., "Bayesian Pseudo Labels: Expectation Maximization for Robust and Efficient Semi-Supervised
Segmentation", MICCAI 2022, Sec. 2 (SegPL-VI): a small encoder maps the globally pooled features of the segmentation
network's last decoder block to the mean and log-variance of the pseudo-labelling threshold's Gaussian posterior.

Self-contained: imports only torch and the standard library. The head is a training-time part only: inference runs
the plain segmentation network (``network_def``), so a released bundle needs MONAI alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ThresholdHead", "FeatureTap", "MONAI_UNET_LAST_DECODER"]

# MONAI UNet = Sequential(down, SkipConnection(...), up): the SkipConnection's output (encoder level-0 features
# concatenated with the decoded ones, 2 x channels[0] channels) is what the last up-layer turns into logits
MONAI_UNET_LAST_DECODER = "model.1"


class ThresholdHead(nn.Module):
    """``(mu, logvar)`` of the threshold posterior from ``(B, C, *spatial)`` decoder features.

    Global average pooling, then two linear maps to a ``latent_dim``-d mean and log-variance (reference code:
    ``ThresholdNet`` on ``AdaptiveAvgPool3d(1)`` of the last decoder's output; Xu et al., MICCAI 2022, Sec. 2).

    Args:
        in_channels: channels of the features (``2 * channels[0]`` for MONAI's UNet at :data:`MONAI_UNET_LAST_DECODER`).
        latent_dim: size of the latent threshold vector (256).

    Raises:
        ValueError: if ``in_channels`` or ``latent_dim`` is < 1.
    """

    def __init__(self, in_channels: int, latent_dim: int = 256) -> None:
        super().__init__()
        if int(in_channels) < 1 or int(latent_dim) < 1:
            raise ValueError(f"ThresholdHead needs in_channels, latent_dim >= 1, got {in_channels!r}, {latent_dim!r}.")
        self.in_channels, self.latent_dim = int(in_channels), int(latent_dim)
        self.mu_layer = nn.Linear(self.in_channels, self.latent_dim)
        self.logvar_layer = nn.Linear(self.in_channels, self.latent_dim)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``features`` over space and return ``(mu, logvar)``, each ``(B, latent_dim)``.

        Raises:
            ValueError: if ``features`` is not ``(B, in_channels, *spatial)``.
        """
        if features.dim() < 3 or features.shape[1] != self.in_channels:
            raise ValueError(
                f"ThresholdHead(in_channels={self.in_channels}) takes (B, {self.in_channels}, *spatial) features, got "
                f"shape {tuple(features.shape)}: set its in_channels to the tapped module's output channels."
            )
        pooled = features.flatten(2).mean(dim=2)
        return self.mu_layer(pooled), self.logvar_layer(pooled)


class FeatureTap:
    """Keep the output of one submodule of a network at each forward pass (a forward hook; no parameters).

    The segmentation network stays the plain MONAI network that inference loads; training reads the features the
    head needs from the same forward pass that gives the logits. A ``DistributedDataParallel`` (or any ``.module``
    wrapper) is unwrapped before the submodule is looked up.

    Args:
        network: the segmentation network (possibly wrapped).
        module_name: dotted name of the submodule (``network.get_submodule``), default the last decoder block of
            MONAI's UNet.

    Raises:
        ValueError: if the network has no submodule of that name (the message lists the top-level ones).
    """

    def __init__(self, network: nn.Module, module_name: str = MONAI_UNET_LAST_DECODER) -> None:
        inner = network
        while hasattr(inner, "module") and isinstance(inner.module, nn.Module):
            inner = inner.module
        try:
            submodule = inner.get_submodule(module_name)
        except AttributeError:
            names = [name for name, _ in inner.named_children()]
            raise ValueError(
                f"{type(inner).__name__} has no submodule {module_name!r} to take decoder features from (its children: "
                f"{names}); set the method's feature_module."
            ) from None
        self.network, self.module_name = inner, module_name
        self.features: torch.Tensor | None = None
        self._handle = submodule.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.features = output

    def pop(self) -> torch.Tensor:
        """The features of the last forward pass, forgotten afterwards (so a stale tensor is never used twice).

        Raises:
            RuntimeError: if the network has not run since the last ``pop``.
        """
        if self.features is None:
            raise RuntimeError(f"no features from {self.module_name!r}: the network has not run since the last pop().")
        features, self.features = self.features, None
        return features

    def remove(self) -> None:
        """Remove the hook."""
        self._handle.remove()
