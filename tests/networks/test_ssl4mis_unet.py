"""The SSL4MIS 3D UNets (``unet_3D`` and URPC's ``unet_3D_dv_semi``, SSL4MIS@06df604 ``code/networks``).

The reference numbers below (parameter counts, state-dict names) were read from the reference modules themselves,
run with ``n_classes`` 2 and 3 and ``in_channels=1``; the same comparison found the outputs of these networks equal
to the reference's, bit for bit, in eval mode and in train mode under the same random seed, with the reference's
weights loaded.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from semiseg.networks import UNet3D, UNet3DPyramid

SMALL = (4, 8, 16, 32, 64)  # a narrow network for the behavioural tests; the reference's filters are 16-256

# parameter counts of SSL4MIS unet_3D / unet_3D_dv_semi(in_channels=1, n_classes=C) at commit 06df604
REFERENCE_PARAMETERS = {
    (UNet3D, 2): 5_884_050,
    (UNet3D, 3): 5_884_067,
    (UNet3DPyramid, 2): 5_884_504,
    (UNet3DPyramid, 3): 5_884_748,
}


def _n_parameters(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def _reference_state_names(heads: tuple[str, ...]) -> set[str]:
    """The state-dict names of the SSL4MIS networks: ``UnetConv3`` blocks (``conv1``/``conv2``, each a Sequential
    whose item 0 is the convolution; instance norm without affine parameters adds nothing), ``UnetUp3_CT`` blocks
    (``<name>.conv.<UnetConv3>``) and the output convolutions."""
    blocks = [f"{b}." for b in ("conv1", "conv2", "conv3", "conv4", "center")]
    blocks += [f"up_concat{i}.conv." for i in (4, 3, 2, 1)]
    names = {f"{b}{c}.0.{p}" for b in blocks for c in ("conv1", "conv2") for p in ("weight", "bias")}
    return names | {f"{h}.{p}" for h in heads for p in ("weight", "bias")}


@pytest.mark.parametrize(("cls", "classes"), list(REFERENCE_PARAMETERS))
def test_parameter_count_equals_the_reference(cls: type, classes: int) -> None:
    assert _n_parameters(cls(in_channels=1, out_channels=classes)) == REFERENCE_PARAMETERS[(cls, classes)]


def test_state_dict_names_are_the_references() -> None:
    """So an SSL4MIS checkpoint loads with ``load_state_dict`` as it is."""
    assert set(UNet3D(1, 3, SMALL).state_dict()) == _reference_state_names(("final",))
    pyramid = ("dsv1", "dsv2.dsv.0", "dsv3.dsv.0", "dsv4.dsv.0")
    assert set(UNet3DPyramid(1, 3, SMALL).state_dict()) == _reference_state_names(pyramid)
    assert set(UNet3DPyramid(1, 3, SMALL, num_outputs=1).state_dict()) == _reference_state_names(("dsv1",))


def test_instance_norm_without_affine_parameters_and_no_batch_norm() -> None:
    """The reference's ``UnetConv3`` uses ``nn.InstanceNorm3d`` (whatever its ``is_batchnorm`` argument says)."""
    for net in (UNet3D(1, 2, SMALL), UNet3DPyramid(1, 2, SMALL)):
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        assert len(norms) == 18  # two per block, nine blocks
        assert all(type(m) is nn.InstanceNorm3d and not m.affine and not m.track_running_stats for m in norms)
        convs = [m for m in net.modules() if isinstance(m, nn.Conv3d)]
        assert not any(isinstance(m, nn.ConvTranspose3d) for m in net.modules())
        assert all(m.kernel_size == (3, 3, 3) and m.padding == (1, 1, 1) for m in convs if m.out_channels in SMALL)


def test_kaiming_normal_convolution_weights() -> None:
    """``init_weights(m, 'kaiming')``: N(0, 2 / fan_in) for every convolution weight."""
    torch.manual_seed(0)
    net = UNet3D(1, 2)  # reference filters: large tensors, so the sample std is within 1% of the target
    convs = {"center.conv2.0": net.center.conv2[0], "up_concat4.conv.conv1.0": net.up_concat4.conv.conv1[0]}
    for name, conv in convs.items():
        fan_in = conv.weight[0].numel()
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02), name
        assert conv.weight.mean().item() == pytest.approx(0.0, abs=0.05 * math.sqrt(2 / fan_in)), name


def test_unet3d_shapes_and_eval_mode_determinism() -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 3, SMALL)
    x = torch.randn(2, 1, 32, 16, 48)
    with torch.no_grad():
        train_a, train_b = net.train()(x), net(x)
        eval_a, eval_b = net.eval()(x), net(x)
    assert train_a.shape == eval_a.shape == (2, 3, 32, 16, 48)
    assert not torch.allclose(train_a, train_b)  # dropout in train mode
    assert torch.equal(eval_a, eval_b)


def _call_order(net: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The network's direct children in the order they run, with each one's first input and output."""
    order: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, child in net.named_children():
        def hook(_m: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
            order.append(name)
            inputs[name], outputs[name] = args[-1], out
        handles.append(child.register_forward_hook(hook))
    with torch.no_grad():
        net(x)
    for handle in handles:
        handle.remove()
    return order, inputs, outputs


def test_unet3d_dropout_on_the_bottleneck_and_before_the_last_convolution() -> None:
    torch.manual_seed(0)
    net = UNet3D(1, 3, SMALL, dropout=0.3).train()
    dropouts = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert [(n, type(m), m.p) for n, m in dropouts] == [("dropout1", nn.Dropout, 0.3), ("dropout2", nn.Dropout, 0.3)]
    order, inputs, outputs = _call_order(net, torch.randn(1, 1, 32, 32, 32))
    assert [n for n in order if n != "pool"] == [
        "conv1", "conv2", "conv3", "conv4", "center", "dropout1", "up_concat4", "up_concat3", "up_concat2",
        "up_concat1", "dropout2", "final",
    ]
    assert inputs["dropout1"] is outputs["center"] and inputs["up_concat4"] is outputs["dropout1"]  # the bottleneck
    assert inputs["dropout2"] is outputs["up_concat1"] and inputs["final"] is outputs["dropout2"]  # before the last
    # element-wise: single voxels dropped, not whole channels
    dropped = outputs["dropout2"] == 0
    assert dropped.any() and not dropped.flatten(2).all(dim=2).any()


def test_pyramid_outputs_finest_first_in_train_mode_and_main_alone_in_eval() -> None:
    torch.manual_seed(0)
    net = UNet3DPyramid(1, 3, SMALL)
    x = torch.randn(2, 1, 32, 48, 16)
    with torch.no_grad():
        outputs = net.train()(x)
        main_a, main_b = net.eval()(x), net(x)
    assert isinstance(outputs, list) and len(outputs) == 4
    assert all(o.shape == (2, 3, 32, 48, 16) for o in outputs)
    assert main_a.shape == (2, 3, 32, 48, 16) and torch.equal(main_a, main_b)
    # eval mode is the first training output with dropout off
    for m in net.modules():
        if isinstance(m, nn.Dropout3d):
            m.p = 0.0
    with torch.no_grad():
        assert torch.equal(net.train()(x)[0], main_a)


@pytest.mark.parametrize("num_outputs", [1, 2, 3, 4])
def test_pyramid_num_outputs(num_outputs: int) -> None:
    net = UNet3DPyramid(1, 2, SMALL, num_outputs=num_outputs).train()
    with torch.no_grad():
        out = net(torch.randn(1, 1, 32, 32, 32))
    if num_outputs == 1:  # the plain segmentation network (URPC's supervised control)
        assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 32, 32, 32)
    else:
        assert len(out) == num_outputs
    heads = {n for n, _ in net.named_children() if n.startswith("dsv")}
    assert heads == {f"dsv{i}" for i in range(1, num_outputs + 1)}


def test_pyramid_channel_dropout_on_the_four_decoder_levels() -> None:
    """``Dropout3d`` 0.5/0.3/0.2/0.1 on the outputs of up_concat4 .. up_concat1, which the next level and that
    level's head both read; nothing else is dropped."""
    torch.manual_seed(0)
    net = UNet3DPyramid(1, 3, SMALL).train()
    dropouts = [(n, type(m), m.p) for n, m in net.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    assert dropouts == [("dropout1", nn.Dropout3d, 0.5), ("dropout2", nn.Dropout3d, 0.3),
                        ("dropout3", nn.Dropout3d, 0.2), ("dropout4", nn.Dropout3d, 0.1)]
    order, inputs, outputs = _call_order(net, torch.randn(2, 1, 32, 32, 32))
    assert [n for n in order if n != "pool"] == [
        "conv1", "conv2", "conv3", "conv4", "center", "up_concat4", "dropout1", "up_concat3", "dropout2",
        "up_concat2", "dropout3", "up_concat1", "dropout4", "dsv1", "dsv2", "dsv3", "dsv4",
    ]
    levels = {"dropout1": ("up_concat4", "up_concat3", "dsv4"), "dropout2": ("up_concat3", "up_concat2", "dsv3"),
              "dropout3": ("up_concat2", "up_concat1", "dsv2"), "dropout4": ("up_concat1", None, "dsv1")}
    for dropout, (level, next_level, head) in levels.items():
        assert inputs[dropout] is outputs[level]
        assert inputs[head] is outputs[dropout]
        if next_level is not None:
            assert inputs[next_level] is outputs[dropout]
    # whole channels: every (item, channel) map of dropout1's output (p 0.5, 2 x 32 maps) is zero or its input / 0.5
    before, after = inputs["dropout1"].flatten(2), outputs["dropout1"].flatten(2)
    dropped = (after == 0).all(dim=2)
    kept = torch.isclose(after, before / 0.5).all(dim=2)
    assert dropped.any() and kept.any() and (dropped | kept).all()


def test_pyramid_coarser_heads_read_their_levels() -> None:
    """dsv2/dsv3/dsv4 are 1x1x1 convolutions on the 1/2, 1/4 and 1/8 levels, upsampled x2, x4, x8."""
    net = UNet3DPyramid(1, 3, SMALL)
    for name, channels, scale in (("dsv2", 8, 2.0), ("dsv3", 16, 4.0), ("dsv4", 32, 8.0)):
        conv, up = getattr(net, name).dsv
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (channels, 3, (1, 1, 1)), name
        assert (up.scale_factor, up.mode, up.align_corners) == (scale, "trilinear", None), name
    assert (net.dsv1.in_channels, net.dsv1.kernel_size) == (4, (1, 1, 1))


@pytest.mark.parametrize("cls", [UNet3D, UNet3DPyramid])
def test_state_dict_round_trip(cls: type) -> None:
    torch.manual_seed(0)
    net = cls(1, 3, SMALL).eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = cls(1, 3, SMALL).eval()
    x = torch.randn(1, 1, 16, 32, 16)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), net(x))
        fresh.load_state_dict(torch.load(buffer, weights_only=True))
        assert torch.equal(fresh(x), net(x))


def test_pyramid_control_loads_the_pyramids_weights_less_its_coarser_heads() -> None:
    pyramid, control = UNet3DPyramid(1, 3, SMALL).eval(), UNet3DPyramid(1, 3, SMALL, num_outputs=1).eval()
    result = control.load_state_dict(pyramid.state_dict(), strict=False)
    assert not result.missing_keys and {k.split(".")[0] for k in result.unexpected_keys} == {"dsv2", "dsv3", "dsv4"}
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(control(x), pyramid(x))


@pytest.mark.parametrize(("cls", "num_outputs"), [(UNet3D, None), (UNet3DPyramid, 1), (UNet3DPyramid, 4)])
def test_torchscript_export_matches_eager(cls: type, num_outputs: int | None) -> None:
    """Both export routes of ``semiseg.verify`` (``export_use_trace`` false: script; true: trace)."""
    from semiseg.verify import export_matches_eager

    torch.manual_seed(0)
    net = cls(1, 3, SMALL) if num_outputs is None else cls(1, 3, SMALL, num_outputs=num_outputs)
    shape = (1, 1, 32, 32, 16)
    scripted = torch.jit.script(net)
    assert export_matches_eager(net, scripted, shape) is None
    traced = torch.jit.trace(net.eval(), torch.rand(shape))
    assert export_matches_eager(net, traced, shape) is None
    if num_outputs is not None and num_outputs > 1:  # the scripted pyramid keeps the train-mode outputs too
        x = torch.randn(shape)
        torch.manual_seed(2)
        eager = net.train()(x)
        torch.manual_seed(2)
        script = scripted.train()(x)
        assert len(script) == num_outputs and all(torch.equal(a, b) for a, b in zip(eager, script))


@pytest.mark.parametrize("cls", [UNet3D, UNet3DPyramid])
def test_bad_inputs_and_arguments_name_the_value(cls: type) -> None:
    net = cls(1, 2, SMALL)
    with pytest.raises(ValueError, match=r"divisible by 16 .* got shape \[1, 1, 24, 32, 32\]"):
        net(torch.randn(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        net(torch.randn(1, 32, 32, 32))
    with pytest.raises(ValueError, match=r"5 positive filter counts .*filters=\(8, 16, 32, 64\)"):
        cls(1, 2, (8, 16, 32, 64))
    with pytest.raises(ValueError, match="out_channels >= 1"):
        cls(1, 0, SMALL)


def test_bad_dropout_and_num_outputs_name_the_value() -> None:
    with pytest.raises(ValueError, match=r"UNet3D dropout must lie in \[0, 1\), got 1.0"):
        UNet3D(dropout=1.0)
    with pytest.raises(ValueError, match=r"four probabilities .* got \(0.5, 0.3\)"):
        UNet3DPyramid(decoder_dropout=(0.5, 0.3))
    with pytest.raises(ValueError, match="four probabilities"):
        UNet3DPyramid(decoder_dropout=(0.5, 0.3, 0.2, 1.0))
    with pytest.raises(ValueError, match="num_outputs must be 1 to 4, got 5"):
        UNet3DPyramid(num_outputs=5)
