"""The bundles' 3-D residual UNet, built in one place.

Self-contained: imports only torch, MONAI and the standard library, so ``scripts/package_bundles.py`` can ship this
file inside a bundle zip for inference without semiseg installed.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import UNet

__all__ = ["unet"]


def unet(
    in_channels: int = 1,
    out_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 1,
    norm: str | tuple = "instance",
    dropout: float = 0.3,
) -> UNet:
    """MONAI's 3-D ``UNet`` with the bundles' defaults (the ``network_def`` of ``configs/train.json``).

    Four levels (16-32-64-128 channels, three stride-2 downsamplings, so inputs divisible by 8), one residual unit
    per level, instance norm, PReLU (MONAI's default).

    Args:
        in_channels: image channels.
        out_channels: classes, background included (logits out).
        channels: feature channels per level, ``len(strides) + 1`` of them.
        strides: downsampling stride between consecutive levels.
        num_res_units: residual units per block (0: plain convolutions).
        norm: MONAI norm name or ``(name, kwargs)``.
        dropout: dropout probability after every convolution (0.3, the reference `unet_3D`'s rate; MONAI applies it
            in every block where the reference has two dropout layers), active in train mode only.

    Returns:
        The network, in training mode.

    Raises:
        ValueError: if ``channels`` and ``strides`` do not match or ``dropout`` is outside [0, 1).
    """
    if len(channels) < 2 or len(strides) != len(channels) - 1:
        raise ValueError(
            f"unet needs len(strides) == len(channels) - 1 >= 1, got channels={tuple(channels)}, "
            f"strides={tuple(strides)}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"unet dropout must lie in [0, 1), got {dropout}.")
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
        norm=norm,
        dropout=dropout,
    )
