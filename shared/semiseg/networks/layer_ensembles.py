"""Layer Ensembles: segmentation heads on the encoder side of a network, attached with forward hooks.

Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for Segmentation", MICCAI
2022, Sec. 2 (reference code ``pianoza/LayerEnsembles@e5a4a88``, ``methods/layer_ensembles.py`` and
``methods/commons.py``): the outputs of chosen blocks are caught with forward hooks, each goes through a small
segmentation head (a convolution to the class logits, then upsampling to the input size) and the heads, with the
network's own output as the deepest member, form an ensemble from one forward pass. The reference hooks the modules
named ``relu`` of its ResNet-18 encoder (the stem and the 8 residual blocks: 9 heads, 10 members with the decoder's
output); for MONAI's ``UNet`` the analogue is every sub-unit and every level of the encoder
(:func:`unet_encoder_blocks`: 8 heads, 9 members). The wrapped network's code is not changed; its state dict sits
under ``network.`` and the heads under ``heads.``. See docs/architecture.md §3.

Self-contained: imports only torch, MONAI and the standard library, so ``scripts/package_bundles.py`` can ship this
file inside a bundle zip for inference without semiseg installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import ResidualUnit
from monai.networks.layers import Conv
from monai.networks.layers.simplelayers import SkipConnection
from monai.networks.nets import UNet
from torch import nn

__all__ = [
    "LAYER_PRESETS", "OUTPUT_MODES", "LayerEnsembles", "ensemble_log_probs", "unet_blocks", "unet_encoder_blocks"
]

OUTPUT_MODES = ("ensemble", "heads")
LAYER_PRESETS = ("encoder", "all_blocks")  # MONAI UNet: unet_encoder_blocks (the reference's), unet_blocks (0.1.0's)


def _unet_levels(network: UNet) -> tuple[list[str], list[str], str]:
    """MONAI ``UNet``'s down blocks, up blocks (outermost first) and bottom block, by module name."""
    downs: list[str] = []
    ups: list[str] = []
    prefix, block = "model", getattr(network, "model", None)
    while isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[1], SkipConnection):
        downs.append(f"{prefix}.0")
        ups.append(f"{prefix}.2")
        prefix, block = f"{prefix}.1.submodule", block[1].submodule
    if not downs:
        raise ValueError(
            f"{type(network).__name__}.model is not MONAI UNet's Sequential(down, SkipConnection, up): pass the "
            "block names to LayerEnsembles(layers=[...])."
        )
    return downs, ups, prefix


def unet_encoder_blocks(network: UNet) -> list[str]:
    """The encoder side of MONAI's ``UNet``: every sub-unit and every level, in the order the forward pass runs them.

    The reference attaches its heads to the encoder only, after every residual block of its ResNet-18 (two per
    level) and the stem (``pianoza/LayerEnsembles@e5a4a88`` ``methods/commons.py`` lines 29-36, the modules named
    ``relu``). MONAI's ``UNet`` has one ``ResidualUnit`` per level (``num_res_units=1``); its encoder levels are the
    down blocks and the bottom block. The heads go on each level's sub-units (``<level>.conv.unit<i>``: convolution,
    norm, dropout, activation, before the residual sum) and on the level itself (after the residual sum), so the
    bundles' 4-level UNet gets 8 heads: two at each of 1/2, 1/4, 1/8 of the input and two on the bottom, the
    network's own output the 9th member. A level without sub-units (``num_res_units=0``) gets one head.

    Args:
        network: a MONAI ``UNet`` (or subclass keeping its ``model`` layout).

    Returns:
        Module names for :class:`LayerEnsembles`, shallowest first.

    Raises:
        ValueError: if ``network.model`` does not have the ``Sequential(down, SkipConnection, up)`` layout.
    """
    downs, _, bottom = _unet_levels(network)
    names: list[str] = []
    for level in [*downs, bottom]:
        module = network.get_submodule(level)
        if isinstance(module, ResidualUnit):
            names += [f"{level}.conv.{child}" for child, _ in module.conv.named_children()]
        names.append(level)
    return names


def unet_blocks(network: UNet) -> list[str]:
    """Every intermediate block of MONAI's ``UNet``, encoder and decoder, in the order the forward pass runs them.

    The heads of the layer_ensembles bundle 0.1.0 (``layers="all_blocks"``; the reference puts them on the encoder
    only, :func:`unet_encoder_blocks`). MONAI builds the UNet recursively as ``Sequential(down, SkipConnection(inner),
    up)``; the blocks are every ``down``, the bottom block and every ``up`` except the outermost one, whose output is
    the network's own logits (the ensemble's deepest member). The bundles' 4-level UNet has 6: three encoder blocks,
    the bottom, two decoder blocks.

    Args:
        network: a MONAI ``UNet`` (or subclass keeping its ``model`` layout).

    Returns:
        Module names for :class:`LayerEnsembles`, e.g. ``["model.0", "model.1.submodule.0", ...]``.

    Raises:
        ValueError: if ``network.model`` does not have the ``Sequential(down, SkipConnection, up)`` layout.
    """
    downs, ups, bottom = _unet_levels(network)
    return [*downs, bottom, *reversed(ups[1:])]


def ensemble_log_probs(head_logits: Sequence[torch.Tensor], skip_first: int = 0) -> torch.Tensor:
    """``log(mean_h softmax(z_h))`` over the heads after the first ``skip_first``.

    The mean of the heads' softmax is the Layer Ensembles prediction (Kushibar et al. 2022, Sec. 2); its logarithm
    is returned so that a consumer applying softmax (the bundles' post-processing, MONAI Label) recovers the mean
    probability exactly: ``softmax(log p) = p / sum(p) = p``. Probabilities are clamped at the smallest positive
    float before the log, so no value is infinite.

    Args:
        head_logits: ``L`` logits ``(B, C, *spatial)``, shallowest first.
        skip_first: heads left out at the start.

    Returns:
        ``(B, C, *spatial)`` float32 log-probabilities.

    Raises:
        ValueError: if no head is left after skipping.
    """
    kept = list(head_logits)[skip_first:]
    if not kept:
        raise ValueError(f"skip_first={skip_first} leaves none of the {len(head_logits)} heads.")
    probs = torch.stack([torch.softmax(z.float(), dim=1) for z in kept]).mean(dim=0)
    return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


class LayerEnsembles(nn.Module):
    """Wrap a segmentation network with one head per chosen block (Kushibar et al., MICCAI 2022).

    The blocks' outputs are caught by forward hooks, registered for the duration of each forward pass (so a deep
    copy, an EMA teacher, pickling and ``DistributedDataParallel`` need nothing special). Each head is a
    ``head_kernel_size`` convolution from the block's channels to the classes at the block's resolution, followed by
    trilinear (bilinear in 2-D) upsampling to the output size with ``align_corners=True`` (the reference's
    ``SegmentationHead``: a 3x3 convolution, then ``UpsamplingBilinear2d``, ``methods/layer_ensembles.py`` lines
    42-48); the network's own output is the last, deepest member. Head channels are found by one probe forward pass
    on zeros when the wrapper is built (eval mode, no gradient, no random numbers drawn, the training flag restored).

    * Training mode: the list of ``num_outputs`` logits ``(B, C, *spatial)``, shallowest first, the network's
      output last (every head is trained; skipping applies at test time only).
    * Eval mode, ``output="ensemble"`` (default): ``log(mean softmax)`` of the heads after the first
      ``skip_first`` (:func:`ensemble_log_probs`). It is the ``pred`` the bundles' post-processing expects:
      ``Activationsd(softmax=True)`` turns it back into the mean probability exactly (returning the probabilities
      themselves would be softmaxed a second time).
    * Eval mode, ``output="heads"``: the kept heads' softmax probabilities concatenated along the channels,
      ``(B, K * C, *spatial)`` with ``K = num_outputs - skip_first``, for the uncertainty maps and AULA
      (:mod:`semiseg.inference.layer_ensembles`). Sliding-window blending is a convex combination of
      probabilities, so the mean of the blended heads is the blend of their mean.

    Export to TorchScript by tracing (``python -m monai.bundle ckpt_export ... --use_trace True --input_shape
    "[1, 1, 48, 48, 48]"``); the per-call hooks are Python closures, which ``torch.jit.script`` cannot compile.

    Args:
        network: the segmentation network (logits out), unchanged.
        layers: names of the blocks to put heads on (``network.named_modules()`` names), any order (they are sorted
            by when the forward pass runs them), or for MONAI's ``UNet`` a preset: ``"encoder"`` (default, the
            reference's placement, :func:`unet_encoder_blocks`) or ``"all_blocks"`` (encoder and decoder blocks,
            bundle 0.1.0's, :func:`unet_blocks`); ``None`` is ``"encoder"``.
        skip_first: heads left out of the ensemble at test time, shallowest first (the paper's "skipping"; the
            reference's ``SKIP_FIRST_T`` is 3 of its 10 members), at most ``num_outputs - 1``.
        head_kernel_size: the heads' convolution kernel (odd; 3, the reference's; 1: a 1x1x1 convolution).
        in_channels: image channels for the probe; default ``network.in_channels``.
        spatial_dims: 2 or 3; default ``network.dimensions`` (MONAI) or 3.
        probe_size: spatial size of the probe input (a size the network accepts).
        output: ``"ensemble"`` or ``"heads"`` (eval mode; see above, and :meth:`set_output`).

    Raises:
        ValueError: on an unknown or repeated layer name or preset, a preset for a network that is not MONAI's
            ``UNet``, a layer the probe pass does not run exactly once or whose output is not a ``(B, C, *spatial)``
            tensor, ``skip_first`` out of range, an even kernel, an unknown ``output``, or a network whose
            ``in_channels`` is unknown.
    """

    def __init__(
        self,
        network: nn.Module,
        layers: Sequence[str] | str | None = "encoder",
        skip_first: int = 0,
        head_kernel_size: int = 3,
        in_channels: int | None = None,
        spatial_dims: int | None = None,
        probe_size: int | Sequence[int] = 32,
        output: str = "ensemble",
    ) -> None:
        super().__init__()
        self.network = network
        if layers is None or isinstance(layers, str):
            preset = "encoder" if layers is None else layers
            if preset not in LAYER_PRESETS:
                raise ValueError(f"LayerEnsembles layers must be one of {LAYER_PRESETS} or a list of module names, "
                                 f"got {preset!r}.")
            if not isinstance(network, UNet):
                raise ValueError(
                    f"LayerEnsembles finds the blocks of MONAI's UNet by itself; for a {type(network).__name__} "
                    "pass layers=[module names] (see network.named_modules())."
                )
            layers = unet_encoder_blocks(network) if preset == "encoder" else unet_blocks(network)
        names = dict(network.named_modules())
        unknown = [name for name in layers if name not in names or name == ""]
        if unknown or len(set(layers)) != len(layers):
            raise ValueError(
                f"LayerEnsembles layers must be distinct submodule names of {type(network).__name__}; "
                f"{'unknown: ' + str(unknown) if unknown else 'repeated: ' + str(list(layers))}."
            )
        if head_kernel_size < 1 or head_kernel_size % 2 == 0:
            raise ValueError(f"head_kernel_size must be odd and >= 1, got {head_kernel_size}.")
        self.spatial_dims = int(spatial_dims or getattr(network, "dimensions", None) or 3)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"LayerEnsembles supports spatial_dims 2 or 3, got {self.spatial_dims}.")
        in_channels = in_channels if in_channels is not None else getattr(network, "in_channels", None)
        if in_channels is None:
            raise ValueError(f"{type(network).__name__} has no in_channels attribute: pass in_channels.")
        sizes = [probe_size] * self.spatial_dims if isinstance(probe_size, int) else list(probe_size)
        self.layers, channels, num_classes = self._probe(list(layers), (1, int(in_channels), *sizes))
        conv = Conv[Conv.CONV, self.spatial_dims]
        self.heads = nn.ModuleList(
            conv(c, num_classes, kernel_size=head_kernel_size, padding=head_kernel_size // 2) for c in channels
        )
        self.num_classes = num_classes
        self.num_outputs = len(self.layers) + 1
        if not 0 <= skip_first < self.num_outputs:
            raise ValueError(
                f"skip_first must be in [0, {self.num_outputs - 1}] ({self.num_outputs} outputs), got {skip_first}."
            )
        self.skip_first = int(skip_first)
        self._mode = "trilinear" if self.spatial_dims == 3 else "bilinear"
        self.output = "ensemble"
        self.set_output(output)

    def set_output(self, output: str) -> LayerEnsembles:
        """Choose the eval-mode output, ``"ensemble"`` or ``"heads"``; returns ``self`` for config expressions
        (``"$@network_def.set_output('heads').to(@device)"``).

        Raises:
            ValueError: on another value.
        """
        if output not in OUTPUT_MODES:
            raise ValueError(f"LayerEnsembles output must be one of {OUTPUT_MODES}, got {output!r}.")
        self.output = output
        return self

    @property
    def num_kept(self) -> int:
        """Heads in the test-time ensemble: ``num_outputs - skip_first``."""
        return self.num_outputs - self.skip_first

    def _probe(self, layers: list[str], shape: tuple[int, ...]) -> tuple[tuple[str, ...], list[int], int]:
        """Run the network once on zeros: block order, block channels and the number of classes."""
        seen: list[tuple[str, Any]] = []
        handles = [
            self.network.get_submodule(name).register_forward_hook(
                lambda _m, _i, out, name=name: seen.append((name, out))
            )
            for name in layers
        ]
        was_training = self.network.training
        parameter = next(self.network.parameters(), None)
        device = parameter.device if parameter is not None else None
        try:
            self.network.eval()
            with torch.no_grad():
                final = self.network(torch.zeros(shape, device=device))
        finally:
            for handle in handles:
                handle.remove()
            self.network.train(was_training)
        order = [name for name, _ in seen]
        bad = [name for name in layers if order.count(name) != 1]
        if bad:
            raise ValueError(f"LayerEnsembles layers {bad} do not run exactly once in a forward pass.")
        for name, out in seen:
            if not isinstance(out, torch.Tensor) or out.ndim != self.spatial_dims + 2:
                raise ValueError(
                    f"LayerEnsembles layer {name!r} returns {type(out).__name__}"
                    f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''}; a head needs (B, C, *spatial)."
                )
        if not isinstance(final, torch.Tensor) or final.ndim != self.spatial_dims + 2:
            raise ValueError(f"{type(self.network).__name__} must return (B, C, *spatial) logits.")
        return tuple(order), [int(out.shape[1]) for _, out in seen], int(final.shape[1])

    def _head_logits(self, x: torch.Tensor, first: int) -> list[torch.Tensor]:
        """Logits of the outputs ``first ..`` (heads, then the network's own output), at the output size."""
        features: dict[int, torch.Tensor] = {}
        handles = []
        for i, name in enumerate(self.layers):
            if i >= first:
                hook = lambda _m, _i, out, i=i: features.__setitem__(i, out)
                handles.append(self.network.get_submodule(name).register_forward_hook(hook))
        try:
            final = self.network(x)
        finally:
            for handle in handles:
                handle.remove()
        size = final.shape[2:]
        logits = []
        for i in range(first, len(self.layers)):
            if i not in features:
                raise RuntimeError(f"LayerEnsembles layer {self.layers[i]!r} did not run in this forward pass.")
            logits.append(F.interpolate(self.heads[i](features[i]), size=size, mode=self._mode, align_corners=True))
        return [*logits, final]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """All head logits in training mode; the ensemble (or the kept heads' probabilities) in eval mode.

        Args:
            x: ``(B, in_channels, *spatial)``.

        Returns:
            Training: ``num_outputs`` tensors ``(B, C, *spatial)``. Eval: ``(B, C, *spatial)`` log-probabilities
            (``output="ensemble"``) or ``(B, num_kept * C, *spatial)`` probabilities (``output="heads"``).
        """
        if self.training:
            return self._head_logits(x, 0)
        kept = self._head_logits(x, self.skip_first)
        if self.output == "heads":
            return torch.cat([torch.softmax(z.float(), dim=1) for z in kept], dim=1)
        return ensemble_log_probs(kept)
