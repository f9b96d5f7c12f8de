"""The DAN discriminator: scores a softmax segmentation together with its image as "labelled" or "unlabelled".

Zhang et al., "Deep Adversarial Networks for Biomedical Image Segmentation Utilizing Unannotated Images", MICCAI
2017, Sec. 2 (the evaluation network sees the segmentation and the original image); layer for layer the 3-D
``FC3DDiscriminator`` of SSL4MIS (``networks/discriminator.py``), docs/architecture.md §3.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FC3DDiscriminator"]

_DOWNSAMPLING = 16  # four stride-2 levels


class FC3DDiscriminator(nn.Module):
    """Five stride-2 ``4x4x4`` convolutions, global average pooling and a linear layer to two class logits.

    ``forward(probs, image)``: ``conv0(probs) + conv1(image)`` (the first level sees the segmentation and the image;
    the sum of two convolutions is one convolution over their channel concatenation), then ``conv2``, ``conv3``,
    ``conv4`` with ``features x 2, x 4, x 8`` channels; LeakyReLU (slope 0.2) after every level and ``Dropout3d``
    (0.5) after the first three, as in the reference. The reference pools with ``AvgPool3d(6)``, which is the global
    average for its 96^3 crops (96 / 16 = 6); here the pooling is global for any crop (``AdaptiveAvgPool3d(1)``), so
    the bundles' other crop sizes work and 96^3 gives the reference's output. The two logits are "unlabelled" (index
    0) and "labelled" (index 1), trained with cross-entropy (:class:`semiseg.methods.AdversarialMethod`).

    Args:
        num_classes: channels of the segmentation (softmax) input.
        in_channels: channels of the image input.
        features: channels of the first level (``ndf``, 64 in the reference).
        dropout: ``Dropout3d`` probability after the first three levels (0.5).
        negative_slope: LeakyReLU slope (0.2).
        num_outputs: logits per item (2: "unlabelled", "labelled").

    Raises:
        ValueError: on a channel or feature count < 1, a dropout outside [0, 1) or ``num_outputs`` < 1.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        features: int = 64,
        dropout: float = 0.5,
        negative_slope: float = 0.2,
        num_outputs: int = 2,
    ) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels), ("features", features),
                            ("num_outputs", num_outputs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FC3DDiscriminator: {name} must be an integer >= 1, got {value!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FC3DDiscriminator: dropout must be in [0, 1), got {dropout!r}.")
        self.num_classes, self.in_channels = num_classes, in_channels

        def down(cin: int, cout: int) -> nn.Conv3d:
            return nn.Conv3d(cin, cout, kernel_size=4, stride=2, padding=1)

        self.conv0 = down(num_classes, features)
        self.conv1 = down(in_channels, features)
        self.conv2 = down(features, features * 2)
        self.conv3 = down(features * 2, features * 4)
        self.conv4 = down(features * 4, features * 8)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(features * 8, num_outputs)
        self.leaky_relu = nn.LeakyReLU(negative_slope=negative_slope)
        self.dropout = nn.Dropout3d(dropout)

    def _check(self, probs: torch.Tensor, image: torch.Tensor) -> None:
        if probs.dim() != 5 or image.dim() != 5:
            raise ValueError(
                f"FC3DDiscriminator takes (B, C, D, H, W) tensors, got the segmentation {tuple(probs.shape)} and the "
                f"image {tuple(image.shape)}."
            )
        if probs.shape[1] != self.num_classes or image.shape[1] != self.in_channels:
            raise ValueError(
                f"FC3DDiscriminator expects {self.num_classes} segmentation channel(s) and {self.in_channels} image "
                f"channel(s), got {probs.shape[1]} and {image.shape[1]}."
            )
        if probs.shape[0] != image.shape[0] or probs.shape[2:] != image.shape[2:]:
            raise ValueError(
                f"FC3DDiscriminator: the segmentation {tuple(probs.shape)} and the image {tuple(image.shape)} must "
                "have the same batch size and spatial shape."
            )
        if min(probs.shape[2:]) < _DOWNSAMPLING:
            raise ValueError(
                f"FC3DDiscriminator downsamples by {_DOWNSAMPLING}: every spatial size must be >= {_DOWNSAMPLING}, "
                f"got {tuple(probs.shape[2:])}."
            )

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_outputs)`` for softmax segmentations ``probs`` and their images ``image``."""
        self._check(probs, image)
        x = self.dropout(self.leaky_relu(self.conv0(probs) + self.conv1(image)))
        x = self.dropout(self.leaky_relu(self.conv2(x)))
        x = self.dropout(self.leaky_relu(self.conv3(x)))
        x = self.leaky_relu(self.conv4(x))
        return self.classifier(self.pool(x).flatten(1))
