"""The UA-MT / SSL4MIS left-atrium V-Net (Milletari et al. 2016 with 3x3x3 convolutions, batch norm, dropout)."""

from __future__ import annotations

import pytest
import torch

from semiseg.networks import VNet, vnet


def test_size_matches_the_reference_network() -> None:
    """SSL4MIS's VNet(n_channels=1, n_classes=2, n_filters=16) has 9.45M parameters (the figure papers report)."""
    assert sum(p.numel() for p in vnet().parameters()) == 9_448_866


def test_logits_shape_and_dropout_only_in_train_mode() -> None:
    torch.manual_seed(0)
    net = vnet(out_channels=3, n_filters=4)
    x = torch.randn(2, 1, 32, 32, 16)
    net.train()
    with torch.no_grad():
        a, b = net(x), net(x)
    assert a.shape == (2, 3, 32, 32, 16) and not torch.allclose(a, b)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    no_dropout = VNet(1, 2, n_filters=4, has_dropout=False).train()
    with torch.no_grad():
        assert torch.allclose(no_dropout(x), no_dropout(x))


def test_bad_arguments_and_shapes_name_the_value() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        vnet(n_filters=2)(torch.randn(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match="dropout"):
        VNet(dropout=1.0)
    with pytest.raises(ValueError, match="n_filters"):
        VNet(n_filters=0)
