"""The 3-D UNets of the SSL4MIS 3D scripts: ``unet_3D`` (most methods) and ``unet_3D_dv_semi`` (URPC).

Luo X., SSL4MIS (https://github.com/HiLab-git/SSL4MIS, commit 06df604), ``code/networks/unet_3D.py`` and
``code/networks/unet_3D_dv_semi.py``, after the 3-D UNet of Cicek et al., "3D U-Net: Learning Dense Volumetric
Segmentation from Sparse Annotation", MICCAI 2016, as adapted by Oktay et al.'s Attention-Gated-Networks. Both
networks share one body, built with the reference's defaults (``feature_scale=4``):

* encoder: five levels of two 3x3x3 convolutions (padding 1, bias), each followed by ``InstanceNorm3d`` (no affine
  parameters, no running statistics) and ReLU, with 16, 32, 64, 128, 256 channels, and 2x2x2 max pooling between
  levels (so every spatial size must be divisible by 16);
* decoder: four levels, each a trilinear x2 upsampling (``align_corners=False``) of the deeper level, concatenated
  after the encoder's skip features, then two convolutions as above (no transposed convolutions);
* convolution weights Kaiming-normal (fan-in, gain for ReLU), biases PyTorch's default.

The reference code's docstring and argument name (``is_batchnorm``) say batch norm, but its convolution block
(``networks/utils.py``, ``UnetConv3``) uses ``nn.InstanceNorm3d``; so do these networks. Where they differ:

* :class:`UNet3D` (``unet_3D``): element-wise ``Dropout(0.3)`` on the bottleneck's output and on the last decoder
  level's output, then a 1x1x1 convolution to the logits.
* :class:`UNet3DPyramid` (``unet_3D_dv_semi``, URPC's network): channel dropout (``Dropout3d``) on every decoder
  level's output, p = 0.5, 0.3, 0.2, 0.1 from the deepest level to the finest, and a 1x1x1 convolution on each
  decoder level, the three coarser ones upsampled trilinearly (x8, x4, x2) to the input size: four logits, finest
  first.

The module and parameter names are the reference's, so the state dict of an SSL4MIS checkpoint of either network
loads as it is (``load_state_dict(torch.load(path))``), and vice versa.

Imports only torch and the standard library, so ``scripts/package_bundles.py`` can ship it inside a bundle zip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["UNet3D", "UNet3DPyramid"]

REFERENCE_FILTERS = (16, 32, 64, 128, 256)
"""SSL4MIS ``[64, 128, 256, 512, 1024]`` divided by its default ``feature_scale`` 4."""


class _DoubleConv(nn.Module):
    """Two (3x3x3 convolution, instance norm, ReLU) blocks: SSL4MIS ``UnetConv3`` with ``is_batchnorm=True``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, 1, 1), nn.InstanceNorm3d(out_channels), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(
            nn.Conv3d(out_channels, out_channels, 3, 1, 1), nn.InstanceNorm3d(out_channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class _Up(nn.Module):
    """Trilinear x2 upsampling, concatenation after the skip features, :class:`_DoubleConv`: SSL4MIS ``UnetUp3_CT``
    (its padding of the skip features is zero for sizes divisible by 16, the only sizes these networks take)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = _DoubleConv(in_channels + out_channels, out_channels)
        self.up = nn.Upsample(scale_factor=2.0, mode="trilinear")

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class _UpsampledHead(nn.Module):
    """1x1x1 convolution to the logits, then trilinear upsampling by ``scale``: SSL4MIS ``UnetDsv3``."""

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.dsv = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size=1),
            nn.Upsample(scale_factor=float(scale), mode="trilinear"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsv(x)


def _check_filters(name: str, in_channels: int, out_channels: int, filters: Sequence[int]) -> tuple[int, ...]:
    filters = tuple(int(f) for f in filters)
    if len(filters) != 5 or min(filters) < 1:
        raise ValueError(f"{name} needs 5 positive filter counts (one per level), got filters={filters}.")
    if min(in_channels, out_channels) < 1:
        raise ValueError(f"{name} needs in_channels and out_channels >= 1, got {in_channels} and {out_channels}.")
    return filters


def _check_input(name: str, x: torch.Tensor) -> None:
    if x.dim() != 5 or x.shape[2] % 16 != 0 or x.shape[3] % 16 != 0 or x.shape[4] % 16 != 0:
        raise ValueError(
            f"{name} expects (B, C, D, H, W) with every spatial size divisible by 16 (four 2x2x2 poolings), got "
            f"shape {list(x.shape)}."
        )


def _init_weights(network: nn.Module) -> None:
    """Kaiming-normal convolution weights (fan-in, ReLU gain), as the reference's ``init_weights(m, 'kaiming')``."""
    for module in network.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, a=0, mode="fan_in")


class _Body(nn.Module):
    """The encoder and decoder both networks share (attribute names as the reference's)."""

    def __init__(self, in_channels: int, filters: tuple[int, ...]) -> None:
        super().__init__()
        self.conv1 = _DoubleConv(in_channels, filters[0])
        self.conv2 = _DoubleConv(filters[0], filters[1])
        self.conv3 = _DoubleConv(filters[1], filters[2])
        self.conv4 = _DoubleConv(filters[2], filters[3])
        self.center = _DoubleConv(filters[3], filters[4])
        self.up_concat4 = _Up(filters[4], filters[3])
        self.up_concat3 = _Up(filters[3], filters[2])
        self.up_concat2 = _Up(filters[2], filters[1])
        self.up_concat1 = _Up(filters[1], filters[0])
        self.pool = nn.MaxPool3d(kernel_size=2)

    def _encode(
        self, name: str, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The four skip features and the bottleneck's output (before any dropout), after the input check."""
        _check_input(name, x)
        conv1 = self.conv1(x)
        conv2 = self.conv2(self.pool(conv1))
        conv3 = self.conv3(self.pool(conv2))
        conv4 = self.conv4(self.pool(conv3))
        return conv1, conv2, conv3, conv4, self.center(self.pool(conv4))


class UNet3D(_Body):
    """SSL4MIS ``unet_3D`` (see the module docstring): logits ``(B, out_channels, D, H, W)`` in both modes.

    ``Dropout(dropout)`` (element-wise) acts on the bottleneck's output and on the finest decoder level's output,
    before the 1x1x1 output convolution, in train mode only: what makes an EMA teacher's and UA-MT's Monte-Carlo
    passes differ from the student's.

    Args:
        in_channels: image channels (1 in the reference scripts).
        out_channels: classes, background included.
        filters: channels of the five levels; the reference's ``(16, 32, 64, 128, 256)``.
        dropout: probability of both dropout layers; the reference's 0.3 (``nn.Dropout(p=0.3)``).

    Raises:
        ValueError: on a filter list that is not five positive counts, a non-positive channel count or a dropout
            outside [0, 1).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        filters: Sequence[int] = REFERENCE_FILTERS,
        dropout: float = 0.3,
    ) -> None:
        filters = _check_filters("UNet3D", in_channels, out_channels, filters)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet3D dropout must lie in [0, 1), got {dropout!r}.")
        super().__init__(in_channels, filters)
        self.final = nn.Conv3d(filters[0], out_channels, kernel_size=1)
        self.dropout1 = nn.Dropout(p=dropout)
        self.dropout2 = nn.Dropout(p=dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``x`` (``(B, in_channels, D, H, W)``, every spatial size divisible by 16).

        Raises:
            ValueError: on another number of dimensions or a spatial size not divisible by 16.
        """
        conv1, conv2, conv3, conv4, center = self._encode("UNet3D", x)
        center = self.dropout1(center)
        up = self.up_concat4(conv4, center)
        up = self.up_concat3(conv3, up)
        up = self.up_concat2(conv2, up)
        up = self.dropout2(self.up_concat1(conv1, up))
        return self.final(up)


class UNet3DPyramid(_Body):
    """SSL4MIS ``unet_3D_dv_semi``, URPC's network (see the module docstring).

    * Training mode: a list of ``num_outputs`` logits ``(B, out_channels, D, H, W)``, finest first: the main output
      (``dsv1``, on the finest decoder level), then the heads on the 1/2, 1/4 and 1/8 levels upsampled to the input
      size (``dsv2``, ``dsv3``, ``dsv4``): the reference's ``(dsv1, dsv2, dsv3, dsv4)`` for ``num_outputs=4``.
    * Eval mode: the main logits alone, so ``SlidingWindowInferer``, ``SupervisedEvaluator`` and MONAI Label use it
      like any segmentation network (the coarser heads are not computed).
    * ``num_outputs=1``: no coarser heads, the main logits in both modes: the same network and dropout as a plain
      segmentation network (a supervised control for URPC).

    Args:
        in_channels: image channels (1 in the reference script).
        out_channels: classes, background included.
        filters: channels of the five levels; the reference's ``(16, 32, 64, 128, 256)``.
        decoder_dropout: ``Dropout3d`` probability on each decoder level's output, deepest first (four values); the
            reference's ``(0.5, 0.3, 0.2, 0.1)``.
        num_outputs: outputs in training mode, 1 to 4 (URPC: 4).

    Raises:
        ValueError: on a filter list that is not five positive counts, a non-positive channel count, a
            ``decoder_dropout`` that is not four values in [0, 1), or ``num_outputs`` outside 1..4.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        filters: Sequence[int] = REFERENCE_FILTERS,
        decoder_dropout: Sequence[float] = (0.5, 0.3, 0.2, 0.1),
        num_outputs: int = 4,
    ) -> None:
        filters = _check_filters("UNet3DPyramid", in_channels, out_channels, filters)
        drop = tuple(float(p) for p in decoder_dropout)
        if len(drop) != 4 or any(not 0.0 <= p < 1.0 for p in drop):
            raise ValueError(
                "UNet3DPyramid decoder_dropout needs four probabilities in [0, 1), one per decoder level, deepest "
                f"first, got {tuple(decoder_dropout)}."
            )
        if not 1 <= num_outputs <= 4:
            raise ValueError(f"UNet3DPyramid num_outputs must be 1 to 4, got {num_outputs!r}.")
        super().__init__(in_channels, filters)
        self.num_outputs = num_outputs
        # the coarser heads that exist, finest first (dsv2 at 1/2, dsv3 at 1/4, dsv4 at 1/8 of the input size)
        if num_outputs >= 4:
            self.dsv4 = _UpsampledHead(filters[3], out_channels, scale=8)
        if num_outputs >= 3:
            self.dsv3 = _UpsampledHead(filters[2], out_channels, scale=4)
        if num_outputs >= 2:
            self.dsv2 = _UpsampledHead(filters[1], out_channels, scale=2)
        self.dsv1 = nn.Conv3d(filters[0], out_channels, kernel_size=1)
        self.dropout1 = nn.Dropout3d(p=drop[0])
        self.dropout2 = nn.Dropout3d(p=drop[1])
        self.dropout3 = nn.Dropout3d(p=drop[2])
        self.dropout4 = nn.Dropout3d(p=drop[3])
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Main logits in eval mode; ``num_outputs`` logits at the input size, finest first, in training mode.

        Args:
            x: ``(B, in_channels, D, H, W)``, every spatial size divisible by 16.

        Raises:
            ValueError: on another number of dimensions or a spatial size not divisible by 16.
        """
        conv1, conv2, conv3, conv4, center = self._encode("UNet3DPyramid", x)
        up4 = self.dropout1(self.up_concat4(conv4, center))
        up3 = self.dropout2(self.up_concat3(conv3, up4))
        up2 = self.dropout3(self.up_concat2(conv2, up3))
        up1 = self.dropout4(self.up_concat1(conv1, up2))
        main = self.dsv1(up1)
        if not self.training or self.num_outputs == 1:
            return main
        outputs = [main]
        # hasattr on a submodule is resolved when TorchScript compiles, so every num_outputs scripts
        if hasattr(self, "dsv2"):
            outputs.append(self.dsv2(up2))
        if hasattr(self, "dsv3"):
            outputs.append(self.dsv3(up3))
        if hasattr(self, "dsv4"):
            outputs.append(self.dsv4(up4))
        return outputs
