"""LayerEnsembles wrapper (Kushibar et al., "Layer Ensembles", MICCAI 2022, Sec. 2; docs/architecture.md §3): heads
found on MONAI's UNet and the bundles' network, output shapes per mode, the ensemble's log-probabilities, export."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from monai.networks.nets import UNet

from semiseg.networks import LayerEnsembles, unet, vnet
from semiseg.networks.layer_ensembles import ensemble_log_probs, unet_blocks, unet_encoder_blocks
from tests.helpers import tiny_unet


def test_bundle_network_gets_heads_on_its_encoder_side_and_outputs_at_input_size() -> None:
    # pianoza/LayerEnsembles@e5a4a88 methods/commons.py 29-36: heads on the encoder's modules named relu only (the stem
    # and the 8 residual blocks). The bundles' 4-level UNet: a head on each level's residual sub-unit and on the level
    # (3 down blocks and the bottom), 8 heads, 9 members with the network's own output; 3x3x3 heads as the reference's
    torch.manual_seed(0)
    net = LayerEnsembles(unet())
    down1, down2, down3 = "model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0"
    bottom = "model.1.submodule.1.submodule.1.submodule"
    levels = (down1, down2, down3, bottom)
    assert net.layers == tuple(name for level in levels for name in (f"{level}.conv.unit0", level))
    assert not any(name.endswith(".2") or ".2." in name for name in net.layers)  # no decoder ("up") block
    assert [head.in_channels for head in net.heads] == [16, 16, 32, 32, 64, 64, 128, 128]
    assert all(head.kernel_size == (3, 3, 3) for head in net.heads)
    assert net.num_outputs == 9 and net.num_classes == 3
    x = torch.randn(2, 1, 24, 16, 32)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == 9
    assert all(o.shape == (2, 3, 24, 16, 32) for o in outputs)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, 24, 16, 32)
        assert net.set_output("heads")(x).shape == (2, 9 * 3, 24, 16, 32)


def test_all_blocks_preset_keeps_the_heads_of_bundle_0_1_0() -> None:
    net = LayerEnsembles(unet(), layers="all_blocks", head_kernel_size=1)
    assert net.layers == (
        "model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0",
        "model.1.submodule.1.submodule.1.submodule", "model.1.submodule.1.submodule.2", "model.1.submodule.2",
    )
    assert list(net.layers) == unet_blocks(unet()) and net.num_outputs == 7
    assert unet_encoder_blocks(unet(num_res_units=2))[:3] == ["model.0.conv.unit0", "model.0.conv.unit1", "model.0"]


def test_head_is_a_convolution_at_the_blocks_resolution_upsampled_with_aligned_corners() -> None:
    # the reference's SegmentationHead: conv, then UpsamplingBilinear2d (align_corners=True)
    torch.manual_seed(0)
    net = LayerEnsembles(tiny_unet()).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    features = {}
    handle = net.network.get_submodule("model.0").register_forward_hook(lambda _m, _i, out: features.update(f=out))
    with torch.no_grad():
        first = net._head_logits(x, 0)[0]
    handle.remove()
    expected = torch.nn.functional.interpolate(net.heads[0](features["f"]), size=(16, 16, 16), mode="trilinear",
                                               align_corners=True)
    torch.testing.assert_close(first, expected)


def test_plain_monai_unet_and_named_layers_of_another_network() -> None:
    net = LayerEnsembles(tiny_unet())  # 2 levels: one encoder block and the bottom
    assert net.layers == ("model.0", "model.1.submodule") and net.num_outputs == 3
    assert len(net(torch.randn(1, 1, 16, 16, 16))) == 3
    # a network without auto-discovery: names given in any order are sorted by when they run
    v = LayerEnsembles(vnet(out_channels=2, n_filters=4), layers=["decoder.0", "encoder.1", "encoder.0"],
                       in_channels=1, probe_size=16)
    assert v.layers == ("encoder.0", "encoder.1", "decoder.0")
    assert [h.in_channels for h in v.heads] == [4, 8, 32]
    assert [tuple(o.shape) for o in v(torch.randn(2, 1, 16, 16, 16))] == [(2, 2, 16, 16, 16)] * 4


def test_ensemble_is_the_log_of_the_mean_softmax_so_softmax_recovers_it() -> None:
    # head 1 logits (0, 0) -> p = (1/2, 1/2); head 2 (log 3, 0) -> (3/4, 1/4); mean (5/8, 3/8)
    z1 = torch.zeros(1, 2, 1, 1, 1)
    z2 = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1, 1)
    out = ensemble_log_probs([z1, z2])
    torch.testing.assert_close(out.exp().flatten(), torch.tensor([5 / 8, 3 / 8]))
    torch.testing.assert_close(torch.softmax(out, 1).flatten(), torch.tensor([5 / 8, 3 / 8]))
    # skip_first=1 keeps head 2 alone: (3/4, 1/4)
    torch.testing.assert_close(ensemble_log_probs([z1, z2], skip_first=1).exp().flatten(), torch.tensor([0.75, 0.25]))
    # a probability that underflows to 0 stays finite
    assert torch.isfinite(ensemble_log_probs([torch.tensor([200.0, -200.0]).view(1, 2, 1)])).all()
    with pytest.raises(ValueError, match="leaves none of the 2 heads"):
        ensemble_log_probs([z1, z2], skip_first=2)


def test_eval_outputs_match_the_training_heads_and_skip_first() -> None:
    torch.manual_seed(0)
    net = LayerEnsembles(tiny_unet(), skip_first=1)
    x = torch.randn(2, 1, 16, 16, 16)
    with torch.no_grad():
        net.eval()
        heads = net._head_logits(x, 0)
        kept = torch.stack([torch.softmax(z, 1) for z in heads[1:]])
        torch.testing.assert_close(torch.softmax(net(x), 1), kept.mean(0))
        torch.testing.assert_close(net.set_output("heads")(x), torch.cat(list(kept), dim=1))


def test_deep_copy_is_independent_and_state_dict_keeps_the_network_keys() -> None:
    net = LayerEnsembles(tiny_unet())
    teacher = copy.deepcopy(net)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(1.0)
    x = torch.randn(1, 1, 16, 16, 16)
    assert not torch.allclose(net(x)[0], teacher(x)[0])
    keys = set(net.state_dict())
    assert {f"network.{k}" for k in tiny_unet().state_dict()} <= keys
    assert any(k.startswith("heads.0.") for k in keys)


def test_traced_export_matches_the_eval_output() -> None:
    torch.manual_seed(0)
    net = LayerEnsembles(unet(channels=(4, 8, 16, 32))).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x))
        y = torch.randn(1, 1, 48, 32, 40)  # other sizes too: the upsampling size follows the input
        torch.testing.assert_close(traced(y), net(y))


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="pass layers="):
        LayerEnsembles(vnet(), in_channels=1)
    with pytest.raises(ValueError, match=r"unknown: \['model.9'\]"):
        LayerEnsembles(tiny_unet(), layers=["model.9"])
    with pytest.raises(ValueError, match="skip_first must be in \\[0, 2\\]"):
        LayerEnsembles(tiny_unet(), skip_first=3)
    with pytest.raises(ValueError, match="head_kernel_size must be odd"):
        LayerEnsembles(tiny_unet(), head_kernel_size=2)
    with pytest.raises(ValueError, match="output must be one of"):
        LayerEnsembles(tiny_unet(), output="mean")
    with pytest.raises(ValueError, match="has no in_channels attribute"):
        LayerEnsembles(vnet(), layers=["encoder.0"])
    with pytest.raises(ValueError, match="not MONAI UNet's"):
        unet_blocks(UNet(3, 1, 2, channels=(4, 8), strides=(2,)).model[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"layers must be one of \('encoder', 'all_blocks'\)"):
        LayerEnsembles(tiny_unet(), layers="decoder")
