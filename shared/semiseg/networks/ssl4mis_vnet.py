"""The V-Net of the semi-supervised left-atrium literature (UA-MT, SSL4MIS), with its dropout.

Milletari et al., "V-Net: Fully convolutional neural networks for volumetric medical image segmentation", 3DV 2016,
in the variant that Yu et al. (UA-MT, MICCAI 2019) and the SSL4MIS 3D scripts train on the LA data: 3x3x3
convolutions (not V-Net's 5x5x5), batch norm, ReLU, stride-2 convolutions down and transposed convolutions up,
additive skip connections, 16 base filters, and ``Dropout3d(0.5)`` on the bottleneck and before the output
convolution when ``has_dropout`` (the teacher-student scripts build it with ``has_dropout=True``). MONAI's own
``VNet`` follows the original paper (5x5x5 convolutions, PReLU/ELU, dropout in other places), which is why this
module exists.

Imports only torch, so ``scripts/package_bundles.py`` can ship it inside a bundle zip.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VNet", "vnet"]


def _conv_block(stages: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(stages):
        layers += [
            nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers)


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, kernel_size=2, stride=2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class VNet(nn.Module):
    """3-D V-Net as trained in UA-MT / SSL4MIS on the left atrium (see the module docstring).

    Encoder stages of 1, 2, 3, 3, 3 convolution blocks (16, 32, 64, 128, 256 filters), decoder stages of 3, 3, 2, 1;
    the input's spatial size must be divisible by 16. Returns logits.

    Args:
        in_channels: image channels.
        out_channels: classes (logits channels).
        n_filters: base filters (16 in the reference).
        has_dropout: ``Dropout3d(dropout)`` on the bottleneck and before the output convolution (active in train
            mode only, which is what makes the EMA teacher and Monte-Carlo passes stochastic).
        dropout: dropout probability (0.5 in the reference).

    Raises:
        ValueError: on non-positive channel counts or a dropout outside [0, 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        n_filters: int = 16,
        has_dropout: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, n_filters) < 1:
            raise ValueError(
                f"in_channels, out_channels and n_filters must be >= 1, got {in_channels}, {out_channels}, {n_filters}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        f = n_filters
        self.has_dropout = has_dropout
        self.encoder = nn.ModuleList(
            [_conv_block(1, in_channels, f), _conv_block(2, 2 * f, 2 * f), _conv_block(3, 4 * f, 4 * f),
             _conv_block(3, 8 * f, 8 * f), _conv_block(3, 16 * f, 16 * f)]
        )
        self.downs = nn.ModuleList([_down(f, 2 * f), _down(2 * f, 4 * f), _down(4 * f, 8 * f), _down(8 * f, 16 * f)])
        self.ups = nn.ModuleList([_up(16 * f, 8 * f), _up(8 * f, 4 * f), _up(4 * f, 2 * f), _up(2 * f, f)])
        self.decoder = nn.ModuleList(
            [_conv_block(3, 8 * f, 8 * f), _conv_block(3, 4 * f, 4 * f), _conv_block(2, 2 * f, 2 * f),
             _conv_block(1, f, f)]
        )
        self.out_conv = nn.Conv3d(f, out_channels, kernel_size=1)
        self.dropout = nn.Dropout3d(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 16 for s in x.shape[2:]):
            raise ValueError(f"VNet needs a spatial size divisible by 16, got input shape {tuple(x.shape)}.")
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x)
            if i < len(self.downs):
                skips.append(x)
                x = self.downs[i](x)
        if self.has_dropout:
            x = self.dropout(x)
        for up, block, skip in zip(self.ups, self.decoder, reversed(skips)):
            x = block(up(x) + skip)
        if self.has_dropout:
            x = self.dropout(x)
        return self.out_conv(x)


def vnet(
    in_channels: int = 1, out_channels: int = 2, n_filters: int = 16, has_dropout: bool = True, dropout: float = 0.5
) -> VNet:
    """The reference's ``VNet(n_channels=1, n_classes=2, normalization="batchnorm", has_dropout=True)``.

    Args:
        in_channels: image channels.
        out_channels: classes.
        n_filters: base filters.
        has_dropout: see :class:`VNet`.
        dropout: see :class:`VNet`.

    Returns:
        The network.
    """
    return VNet(in_channels, out_channels, n_filters, has_dropout, dropout)
