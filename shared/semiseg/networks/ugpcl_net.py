"""UGPCL's network in 3D: a shared CNN encoder, a CNN decoder, a Swin transformer decoder and two heads.

Wang et al., "Uncertainty-Guided Pixel Contrastive Learning for Semi-Supervised Medical Image Segmentation", IJCAI
2022, Sec. 3 (reference code ``taovv/UGPCL`` ``codes/models/unet_tf.py``, ``swin_decoder.py``, 2D). The
3D version here is built from MONAI parts:

* encoder and CNN decoder: MONAI's ``BasicUNet`` (the reference: a ResNet-50 encoder with a UNet decoder);
* transformer decoder: the reference's Swin-Unet style decoder in 3D. The encoder features from 1/4 of the input
  size down are embedded by 1x1x1 convolutions with LayerNorm (the reference's ``PatchEmbed`` with patch size 1);
  from the deepest one up, each level is upsampled by a stride-2 transposed convolution with LayerNorm (exactly the
  reference's ``PatchExpand``: a linear expansion of every token into 2x2(x2) tokens), concatenated with the skip,
  reduced by a linear layer and passed through a stage of MONAI's 3D ``SwinTransformerBlock`` (shifted windows,
  relative position bias, no absolute position embedding so that any crop size works); a final x4 transposed
  convolution with LayerNorm (``FinalPatchExpand_X4``) and a 1x1x1 convolution give the logits;
* projection head on the encoder level at 1/4 of the input size, the third level from the bottom as the
  reference's ``features[-3]``, which is at 1/8 of its 2-D input (ResNet-50 has one downsampling more): 1x1x1 conv,
  BatchNorm, ReLU, 1x1x1 conv to ``embed_dim`` (256), L2-normalised per voxel. Kept at 1/4 in 3-D: a 224 x 224
  slice gives 784 embeddings at 1/8, a 48^3 crop 216 (1728 at 1/4), and the demo's lesions shrink to a median of
  2.5 voxels per crop at 1/8 (20 at 1/4; 160 foreground-balanced 48^3 crops of the demo's training labels, nearest
  downsampling), too few for anchors of that class;
* rotation-classification head on the deepest encoder level: global average pooling and a linear layer to 4
  classes (rotations by ``k * 90`` degrees).

In eval mode the network returns the CNN decoder's logits only, so inference, evaluation, MONAI Label and
``verify_net_in_out`` use it as a plain segmentation network (the transformer decoder and heads are not run).

Self-contained: imports only torch, MONAI and the standard library, so ``scripts/package_bundles.py`` can ship this
file inside a bundle zip for inference without semiseg installed. MONAI's ``BasicLayer`` (its Swin stage) needs
``einops``, which a MONAI-only install lacks; :class:`SwinStage` runs MONAI's blocks the same way without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.nets import BasicUNet
from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size
from torch import nn

__all__ = ["UGPCLNet", "SwinStage", "SwinTransformerDecoder", "ChannelLayerNorm", "UGPCL_OUTPUTS"]

UGPCL_OUTPUTS = ("seg", "seg_tf", "embed", "cls")  # the training-mode outputs, as in the reference's dict


class ChannelLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the channels of a channel-first tensor ``(B, C, *spatial)`` (the reference's token
    LayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


class SwinStage(nn.Module):
    """A stage of MONAI 3D ``SwinTransformerBlock``s, alternating regular and shifted windows.

    What MONAI's ``swin_unetr.BasicLayer`` (with ``downsample=None``) computes on a ``(B, C, D, H, W)`` tensor, without
    its ``einops`` dependency: the window size shrinks to the feature size where that is smaller (then without shift),
    the attention mask of the shifted windows comes from MONAI's ``compute_mask``.

    Args:
        dim: channels.
        depth: number of blocks.
        num_heads: attention heads (``dim`` must be divisible by it).
        window_size: window edge in voxels; the shift is half of it.
        drop_path: stochastic depth rate per block (a list of ``depth`` rates) or one rate for all.
        mlp_ratio: MLP hidden size over ``dim``.
        qkv_bias: learnable bias of query, key and value.
        drop: dropout rate.
        attn_drop: attention dropout rate.

    Raises:
        ValueError: if ``dim`` is not divisible by ``num_heads``, or ``depth`` / ``window_size`` < 1.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int = 4,
        drop_path: float | Sequence[float] = 0.0,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1 or window_size < 1:
            raise ValueError(f"SwinStage needs depth >= 1 and window_size >= 1, got {depth} and {window_size}.")
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"SwinStage dim {dim} must be divisible by num_heads {num_heads}.")
        rates = [float(drop_path)] * depth if isinstance(drop_path, (int, float)) else [float(r) for r in drop_path]
        if len(rates) != depth:
            raise ValueError(f"SwinStage drop_path has {len(rates)} rates for {depth} blocks.")
        self.window_size = (window_size,) * 3
        self.shift_size = (window_size // 2,) * 3
        no_shift = (0, 0, 0)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim=dim,
                num_heads=num_heads,
                window_size=self.window_size,
                shift_size=no_shift if i % 2 == 0 else self.shift_size,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rates[i],
            )
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> ``(B, C, D, H, W)``."""
        b, _, d, h, w = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        padded = [int(math.ceil(s / ws)) * ws for s, ws in zip((d, h, w), window)]
        mask = compute_mask(padded, window, shift, x.device)
        x = x.permute(0, 2, 3, 4, 1)
        for block in self.blocks:
            x = block(x, mask)
        return x.reshape(b, d, h, w, -1).permute(0, 4, 1, 2, 3)


def _expand(in_channels: int, out_channels: int, scale: int) -> nn.Sequential:
    """The reference's ``PatchExpand`` / ``FinalPatchExpand_X4``: every token linearly expanded into ``scale^3``
    tokens (a transposed convolution with kernel = stride = ``scale``, no bias), then LayerNorm."""
    return nn.Sequential(
        UpSample(3, in_channels, out_channels, scale_factor=scale, mode="deconv", bias=False),
        ChannelLayerNorm(out_channels),
    )


class SwinTransformerDecoder(nn.Module):
    """The reference's ``SwinTransDecoder`` in 3D, on encoder features given finest first.

    With ``L = len(encoder_channels)`` levels of channels ``dim * 2**i``: the deepest level is embedded and
    expanded x2; each shallower level ``i`` concatenates its embedded skip, reduces it linearly, runs a
    :class:`SwinStage` of ``depths[i]`` blocks with ``num_heads[i]`` heads and (except the finest) expands x2; the
    finest output is LayerNormed, expanded by ``final_scale`` to the input size and mapped to ``out_channels`` logits.

    Args:
        encoder_channels: channels of the encoder features used, finest first (at least 2).
        out_channels: classes.
        dim: channels at the finest level (the reference's ``embed_dim``, 96 at 1/4 of 224x224).
        depths: blocks of the ``L - 1`` Swin stages, finest first (the deepest level has none, as in the reference).
        num_heads: heads of those stages, finest first.
        window_size: Swin window edge.
        final_scale: upsampling from the finest level used to the input size (4: features from 1/4).
        mlp_ratio: Swin MLP ratio.
        drop_path_rate: stochastic depth, linearly increasing over the blocks up to this rate (reference: 0.1).
        qkv_bias: Swin qkv bias.

    Raises:
        ValueError: on fewer than two levels or ``depths`` / ``num_heads`` of the wrong length.
    """

    def __init__(
        self,
        encoder_channels: Sequence[int],
        out_channels: int,
        dim: int = 24,
        depths: Sequence[int] = (2, 2),
        num_heads: Sequence[int] = (3, 6),
        window_size: int = 4,
        final_scale: int = 4,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        levels = len(encoder_channels)
        if levels < 2 or len(depths) != levels - 1 or len(num_heads) != levels - 1:
            raise ValueError(
                f"SwinTransformerDecoder needs >= 2 encoder levels and one depth and head count per Swin stage "
                f"({levels - 1} stages), got encoder_channels={tuple(encoder_channels)}, depths={tuple(depths)}, "
                f"num_heads={tuple(num_heads)}."
            )
        dims = [dim * 2**i for i in range(levels)]
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(levels - 1)]
        self.embeds = nn.ModuleList(
            nn.Sequential(nn.Conv3d(c, d, kernel_size=1), ChannelLayerNorm(d)) for c, d in zip(encoder_channels, dims)
        )
        self.expands = nn.ModuleList(_expand(dims[i], dims[i - 1], 2) for i in range(1, levels))
        self.fuse = nn.ModuleList(nn.Conv3d(2 * dims[i], dims[i], kernel_size=1) for i in range(levels - 1))
        self.stages = nn.ModuleList(
            SwinStage(dims[i], depths[i], num_heads[i], window_size, rates[starts[i] : starts[i] + depths[i]],
                      mlp_ratio, qkv_bias)
            for i in range(levels - 1)
        )
        self.norm_up = ChannelLayerNorm(dims[0])
        self.final_expand = _expand(dims[0], dims[0], final_scale)
        self.output = nn.Conv3d(dims[0], out_channels, kernel_size=1, bias=False)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Encoder features, finest first -> logits at ``final_scale`` times the finest feature's size."""
        x = self.expands[-1](self.embeds[-1](features[-1]))
        for i in range(len(self.stages) - 1, -1, -1):
            x = self.fuse[i](torch.cat([x, self.embeds[i](features[i])], dim=1))
            x = self.stages[i](x)
            if i > 0:
                x = self.expands[i - 1](x)
        return self.output(self.final_expand(self.norm_up(x)))


class UGPCLNet(BasicUNet):
    """MONAI ``BasicUNet`` (shared encoder + CNN decoder) with UGPCL's transformer decoder and heads.

    * Eval mode: the CNN decoder's logits ``(B, out_channels, *spatial)``, exactly ``BasicUNet``'s forward.
    * Training mode: a dict with ``seg`` (CNN decoder logits), ``seg_tf`` (transformer decoder logits, same shape),
      ``embed`` (``(B, embed_dim, *spatial / 4)`` L2-normalised voxel embeddings) and ``cls`` (``(B, 4)`` rotation
      logits).

    Every spatial size must be divisible by 16 (four 2x poolings).

    Args:
        in_channels: image channels.
        out_channels: classes, background included.
        features: ``BasicUNet`` channels: five encoder levels and the last decoder level.
        norm: ``BasicUNet`` norm.
        act: ``BasicUNet`` activation.
        dropout: ``BasicUNet`` dropout (the reference network has none).
        tf_dim: transformer decoder channels at 1/4 of the input size.
        tf_depths: Swin blocks per transformer-decoder stage (at 1/4 and 1/8), reference 2 each.
        tf_num_heads: heads per stage.
        tf_window_size: Swin window edge.
        tf_drop_path_rate: stochastic depth of the transformer decoder (reference 0.1).
        embed_dim: projection dimension (256).
        num_rotations: classes of the rotation head (4: ``k * 90`` degrees).

    Raises:
        ValueError: if ``features`` does not have 6 entries, or ``embed_dim`` / ``num_rotations`` < 1.
    """

    EMBED_LEVEL = 2  # the projection head's encoder level: 1/4 of the input (third from the bottom, as features[-3])
    TF_FIRST_LEVEL = 2  # the transformer decoder uses the encoder levels from 1/4 down, as the reference does

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        features: Sequence[int] = (16, 16, 32, 64, 128, 16),
        norm: str | tuple = ("instance", {"affine": True}),
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        dropout: float = 0.0,
        tf_dim: int = 24,
        tf_depths: Sequence[int] = (2, 2),
        tf_num_heads: Sequence[int] = (3, 6),
        tf_window_size: int = 4,
        tf_drop_path_rate: float = 0.1,
        embed_dim: int = 256,
        num_rotations: int = 4,
    ) -> None:
        if len(features) != 6:
            raise ValueError(f"UGPCLNet features needs 6 channel counts (BasicUNet), got {tuple(features)}.")
        if embed_dim < 1 or num_rotations < 1:
            raise ValueError(f"UGPCLNet embed_dim and num_rotations must be >= 1, got {embed_dim}, {num_rotations}.")
        super().__init__(3, in_channels, out_channels, features, act=act, norm=norm, dropout=dropout)
        encoder = list(features[:5])
        self.size_divisor = 16
        self.tf_decoder = SwinTransformerDecoder(
            encoder[self.TF_FIRST_LEVEL :], out_channels, tf_dim, tf_depths, tf_num_heads, tf_window_size,
            final_scale=2**self.TF_FIRST_LEVEL, drop_path_rate=tf_drop_path_rate,
        )
        width = encoder[self.EMBED_LEVEL]
        self.embed_head = nn.Sequential(
            Convolution(3, width, width, kernel_size=1, act="relu", norm="batch"),
            nn.Conv3d(width, embed_dim, kernel_size=1),
        )
        self.cls_head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1), nn.Linear(encoder[4], num_rotations))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:  # type: ignore[override]
        """CNN logits in eval mode; ``{"seg", "seg_tf", "embed", "cls"}`` in training mode (see the class).

        Raises:
            ValueError: if ``x`` is not ``(B, C, D, H, W)`` with sizes divisible by 16.
        """
        if x.ndim != 5 or any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(
                f"UGPCLNet expects (B, C, D, H, W) with spatial sizes divisible by {self.size_divisor}, got shape "
                f"{tuple(x.shape)}."
            )
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        x4 = self.down_4(x3)
        u3 = self.upcat_3(self.upcat_4(x4, x3), x2)
        seg = self.final_conv(self.upcat_1(self.upcat_2(u3, x1), x0))
        if not self.training:
            return seg
        return {
            "seg": seg,
            "seg_tf": self.tf_decoder([x2, x3, x4]),
            "embed": F.normalize(self.embed_head(x2), p=2, dim=1),
            "cls": self.cls_head(x4),
        }
