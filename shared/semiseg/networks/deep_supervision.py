"""A UNet with pyramid (deep-supervision) outputs for URPC, on MONAI's ``DynUNet``.

URPC (Luo et al., "Efficient Semi-supervised Gross Target Volume of Nasopharyngeal Carcinoma Segmentation via
Uncertainty Rectified Pyramid Consistency", MICCAI 2021) predicts at four decoder scales, rescales every
prediction to the input size and compares them voxel by voxel. Its reference code (SSL4MIS
``networks/unet_3D_dv_semi.py``) applies a 1x1x1 convolution at each scale and upsamples the logits trilinearly;
this module does the same with ``DynUNet``'s supervision heads. The reference regularises the decoder alone:
channel dropout (``nn.Dropout3d``) on each decoder level's output, before its head and the next level, with
p = 0.5, 0.3, 0.2, 0.1 from the deepest level to the finest (``decoder_dropout``); ``DynUNet``'s own ``dropout``
instead follows every convolution, the logits included.

Self-contained: imports only torch, MONAI and the standard library, so ``scripts/package_bundles.py`` can ship this
file inside a bundle zip for inference without semiseg installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet

__all__ = ["DeepSupervisionUNet"]


class _OutputDropout:
    """Forward hook that passes a module's output through ``dropout`` (a ``torch.nn`` dropout module, so it follows
    the network's train/eval mode and ``copy.deepcopy`` maps it to the copy's own)."""

    def __init__(self, dropout: torch.nn.Module) -> None:
        self.dropout = dropout

    def __call__(self, _module: torch.nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return self.dropout(output)


class DeepSupervisionUNet(DynUNet):
    """``DynUNet`` whose training forward returns ``num_outputs`` logits at the input size, finest first.

    The encoder has ``len(filters)`` levels: a stride-1 input block, then ``len(filters) - 1`` stride-2
    downsamplings (3x3x3 kernels throughout, nnU-Net style), so every spatial size must be divisible by
    ``2 ** (len(filters) - 1)`` (16 by default). ``DynUNet`` is built with ``deep_supervision=True`` and
    ``deep_supr_num=num_outputs - 1``; the auxiliary heads (1x1x1 convolutions) sit on the decoder outputs at
    1/2, 1/4, 1/8, ... of the input size.

    * Training mode: ``[main, aux_1/2, aux_1/4, aux_1/8]`` (for ``num_outputs=4``), each ``(B, C, *input_size)``:
      the auxiliary logits are upsampled (trilinear, ``align_corners=False``, as in SSL4MIS ``UnetDsv3``), unlike
      ``DynUNet``'s own nearest-neighbour stacking.
    * ``num_outputs=1``: no auxiliary heads, the main logits in both modes: the same backbone and regularisation as a
      plain segmentation network (a supervised control for URPC); the state dict is then ``DynUNet``'s without
      deep supervision.
    * Eval mode: the main logits only, ``(B, C, *input_size)``, so ``SlidingWindowInferer``, ``SupervisedEvaluator``
      and MONAI Label use it like any segmentation network. The state dict is the same in both modes.

    The auxiliary heads are collected in ``DynUNet``'s shared ``heads`` list, so a ``torch.nn.DataParallel``
    replica would race on it; ``DistributedDataParallel`` (one process per GPU) and ``copy.deepcopy`` (an EMA
    teacher) are fine.

    Args:
        in_channels: image channels.
        out_channels: classes, background included (logits out).
        filters: feature channels per encoder level, at least ``num_outputs + 1`` of them.
        num_outputs: outputs in training mode, the main one included (URPC: 4; 1: no deep supervision).
        norm: MONAI norm name or ``(name, kwargs)``.
        act: MONAI activation name or ``(name, kwargs)`` (``DynUNet``'s default, leaky ReLU 0.01).
        dropout: ``DynUNet``'s element-wise dropout after every convolution (encoder, decoder, and the output and
            supervision heads, so on the logits too); 0 (none) in the URPC reference.
        decoder_dropout: channel dropout (``Dropout3d``/``Dropout2d``) on the output of each decoder level, deepest
            first, one probability per level (``len(filters) - 1``): the reference's ``(0.5, 0.3, 0.2, 0.1)``
            for five levels. ``None``: no decoder dropout.
        res_block: residual blocks instead of plain double convolutions.
        spatial_dims: 3 (trilinear upsampling) or 2 (bilinear).

    Raises:
        ValueError: if ``num_outputs``, ``filters``, ``dropout``, ``decoder_dropout`` or ``spatial_dims`` is out of
            range.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 3,
        filters: Sequence[int] = (16, 32, 64, 128, 256),
        num_outputs: int = 4,
        norm: str | tuple = "instance",
        act: str | tuple = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: float = 0.0,
        res_block: bool = False,
        spatial_dims: int = 3,
        decoder_dropout: Sequence[float] | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"DeepSupervisionUNet supports spatial_dims 2 or 3, got {spatial_dims}.")
        if num_outputs < 1:
            raise ValueError(f"DeepSupervisionUNet needs num_outputs >= 1 (the main output), got {num_outputs}.")
        if len(filters) < num_outputs + 1:
            raise ValueError(
                f"DeepSupervisionUNet with num_outputs={num_outputs} needs at least {num_outputs + 1} filters "
                f"(encoder levels), got filters={tuple(filters)}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DeepSupervisionUNet dropout must lie in [0, 1), got {dropout}.")
        decoder_p = tuple(float(p) for p in decoder_dropout) if decoder_dropout is not None else ()
        if decoder_dropout is not None and len(decoder_p) != len(filters) - 1:
            raise ValueError(
                f"DeepSupervisionUNet decoder_dropout needs one probability per decoder level ({len(filters) - 1} "
                f"for filters={tuple(filters)}), deepest first, got {tuple(decoder_dropout)}."
            )
        if any(not 0.0 <= p < 1.0 for p in decoder_p):
            raise ValueError(f"DeepSupervisionUNet decoder_dropout values must lie in [0, 1), got {decoder_p}.")
        strides = [1] + [2] * (len(filters) - 1)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * len(filters),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=list(filters),
            dropout=dropout or None,
            norm_name=norm,
            act_name=act,
            deep_supervision=num_outputs > 1,
            deep_supr_num=max(num_outputs - 1, 1),
            res_block=res_block,
        )
        self.num_outputs = num_outputs
        self.size_divisor = 2 ** (len(filters) - 1)
        self._mode = "trilinear" if spatial_dims == 3 else "bilinear"
        # parameter-free, so the state dict is DynUNet's; a forward hook on each up block (deepest first, as
        # ``upsamples``) drops channels of its output before the block's head and the next level see it
        drop = torch.nn.Dropout3d if spatial_dims == 3 else torch.nn.Dropout2d
        self.decoder_dropout = torch.nn.ModuleList(drop(p) for p in decoder_p)
        for up, level_dropout in zip(self.upsamples, self.decoder_dropout):
            up.register_forward_hook(_OutputDropout(level_dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Main logits in eval mode; ``num_outputs`` logits at the input size, finest first, in training mode.

        Args:
            x: ``(B, in_channels, *spatial)``, every spatial size divisible by ``size_divisor``.

        Returns:
            ``(B, out_channels, *spatial)`` in eval mode, a list of ``num_outputs`` such tensors in training mode.

        Raises:
            ValueError: if ``x`` has the wrong number of dimensions or a spatial size not divisible by
                ``size_divisor``.
        """
        if x.ndim != self.spatial_dims + 2 or any(s % self.size_divisor for s in x.shape[2:]):
            raise ValueError(
                f"DeepSupervisionUNet expects (B, C, *spatial) with {self.spatial_dims} spatial sizes divisible by "
                f"{self.size_divisor}, got shape {tuple(x.shape)}."
            )
        out = self.output_block(self.skip_layers(x))
        if not self.training or self.num_outputs == 1:
            return out
        size = tuple(out.shape[2:])
        aux = [F.interpolate(head, size=size, mode=self._mode, align_corners=False) for head in self.heads]
        return [out, *aux]
