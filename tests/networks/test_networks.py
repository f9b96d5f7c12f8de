"""semiseg.networks: the bundles' UNet factory and the URPC deep-supervision UNet (Luo et al., MICCAI 2021)."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.networks.nets import UNet

from semiseg.networks import DeepSupervisionUNet, unet
from tests.bundles.conftest import config

SMALL = (4, 8, 16, 32, 64)


def _same_architecture(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return repr(a) == repr(b) and {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }


def test_unet_defaults_match_the_bundles_network_def() -> None:
    expected = UNet(3, 1, 3, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=1, norm="instance",
                    dropout=0.3)
    assert _same_architecture(unet(), expected)
    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "train.json"))
    assert _same_architecture(unet(), parser.get_parsed_content("network_def"))


def test_unet_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match=r"strides=\(2, 2\)"):
        unet(channels=(8, 16, 32, 64), strides=(2, 2))
    with pytest.raises(ValueError, match="1.5"):
        unet(dropout=1.5)


def test_training_mode_returns_four_logits_at_input_size_finest_first() -> None:
    torch.manual_seed(0)
    net = DeepSupervisionUNet(in_channels=1, out_channels=3, filters=SMALL).train()
    outputs = net(torch.randn(2, 1, 32, 16, 48))
    assert isinstance(outputs, list) and len(outputs) == 4
    assert all(o.shape == (2, 3, 32, 16, 48) for o in outputs)
    # the auxiliary heads sit at 1/2, 1/4, 1/8 of the input size before upsampling (URPC's four scales)
    assert [tuple(h.shape[2:]) for h in net.heads] == [(16, 8, 24), (8, 4, 12), (4, 2, 6)]
    assert not any(torch.allclose(outputs[0], o) for o in outputs[1:])


def test_aux_outputs_are_trilinear_upsamplings_of_the_heads() -> None:
    net = DeepSupervisionUNet(filters=SMALL).train()
    outputs = net(torch.randn(1, 1, 32, 32, 32))
    up = torch.nn.functional.interpolate(net.heads[2], size=(32, 32, 32), mode="trilinear", align_corners=False)
    assert torch.equal(outputs[3], up)


def test_every_head_gets_gradients() -> None:
    net = DeepSupervisionUNet(filters=SMALL).train()
    outputs = net(torch.randn(1, 1, 32, 32, 32))
    sum(o.mean() for o in outputs[1:]).backward()
    grads = [p.grad for p in net.deep_supervision_heads.parameters()]
    assert len(grads) == 6 and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_eval_mode_returns_the_main_output_for_sliding_window_inference() -> None:
    torch.manual_seed(0)
    net = DeepSupervisionUNet(filters=SMALL)
    x = torch.randn(1, 1, 32, 32, 32)
    main_train = net.train()(x)[0]
    net.eval()
    with torch.no_grad():
        main_eval = net(x)
        assert isinstance(main_eval, torch.Tensor)
        torch.testing.assert_close(main_eval, main_train.detach())  # instance norm, no dropout: same function
        volume = torch.randn(1, 1, 40, 48, 36)  # not divisible by 16: the inferer's 32^3 windows are
        seg = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=2)(volume, net)
    assert seg.shape == (1, 3, 40, 48, 36)


def test_deepcopy_keeps_its_own_heads_for_an_ema_teacher() -> None:
    student = DeepSupervisionUNet(filters=SMALL).train()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.1)
    x = torch.randn(1, 1, 32, 32, 32)
    s_out, t_out = student(x), teacher(x)
    assert teacher.heads is not student.heads
    assert not torch.allclose(s_out[1], t_out[1])
    torch.testing.assert_close(t_out[1], teacher(x)[1])


def test_default_is_four_outputs_and_state_dict_is_mode_independent() -> None:
    net = DeepSupervisionUNet()
    assert net.num_outputs == 4 and net.deep_supr_num == 3 and net.size_divisor == 16
    other = DeepSupervisionUNet().eval()
    other.load_state_dict(net.state_dict())  # strict: a checkpoint from training loads for inference


def test_two_outputs_and_2d() -> None:
    net = DeepSupervisionUNet(in_channels=2, out_channels=4, filters=(4, 8, 16), num_outputs=2, spatial_dims=2)
    outputs = net.train()(torch.randn(1, 2, 16, 24))
    assert [o.shape for o in outputs] == [(1, 4, 16, 24)] * 2


def test_argument_and_input_checks_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match=r"at least 5 filters.*\(8, 16, 32, 64\)"):
        DeepSupervisionUNet(filters=(8, 16, 32, 64))
    with pytest.raises(ValueError, match="num_outputs >= 1.*0"):
        DeepSupervisionUNet(num_outputs=0)
    with pytest.raises(ValueError, match="spatial_dims 2 or 3, got 1"):
        DeepSupervisionUNet(spatial_dims=1)
    with pytest.raises(ValueError, match=r"divisible by 16, got shape \(1, 1, 24, 32, 32\)"):
        DeepSupervisionUNet(filters=SMALL)(torch.randn(1, 1, 24, 32, 32))


REFERENCE_DECODER_DROPOUT = (0.5, 0.3, 0.2, 0.1)  # SSL4MIS unet_3D_dv_semi: Dropout3d after up4, up3, up2, up1


def test_decoder_dropout_drops_whole_channels_of_each_up_block_deepest_first() -> None:
    torch.manual_seed(0)
    net = DeepSupervisionUNet(filters=SMALL, decoder_dropout=REFERENCE_DECODER_DROPOUT).train()
    before, after = {}, {}
    for i, up in enumerate(net.upsamples):  # upsamples[0] is the deepest decoder level
        up.register_forward_hook(lambda _m, _i, out, i=i: before.__setitem__(i, out.detach()), prepend=True)
        up.register_forward_hook(lambda _m, _i, out, i=i: after.__setitem__(i, out.detach()))
    outputs = net(torch.randn(2, 1, 32, 32, 32))
    assert len(outputs) == 4 and [m.p for m in net.decoder_dropout] == list(REFERENCE_DECODER_DROPOUT)
    for i, p in enumerate(REFERENCE_DECODER_DROPOUT):
        kept = after[i].flatten(2).abs().sum(-1) > 0  # (B, C): a channel is dropped whole or kept whole
        scaled = before[i] / (1 - p) * kept[..., None, None, None]
        torch.testing.assert_close(after[i], scaled)
        assert 0 < kept.float().mean() < 1  # 2 x (32 .. 4) channels: some dropped, some kept at every level
    # the heads and the next level see the dropped features: the finest head's logits come from after[3]
    torch.testing.assert_close(outputs[0], net.output_block(after[3]))


def test_decoder_dropout_is_off_in_eval_and_leaves_the_state_dict_alone() -> None:
    plain = DeepSupervisionUNet(filters=SMALL).eval()
    dropped = DeepSupervisionUNet(filters=SMALL, decoder_dropout=REFERENCE_DECODER_DROPOUT).eval()
    dropped.load_state_dict(plain.state_dict())  # strict: same keys, the dropout modules have no state
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dropped(x), plain(x))
    teacher = copy.deepcopy(dropped.train())
    hook = next(iter(teacher.upsamples[0]._forward_hooks.values()))
    assert hook.dropout is teacher.decoder_dropout[0] and hook.dropout is not dropped.decoder_dropout[0]
    teacher.eval()
    assert not hook.dropout.training  # the copy's hook follows the copy's mode
    with pytest.raises(ValueError, match=r"one probability per decoder level \(4 .*got \(0.5, 0.3\)"):
        DeepSupervisionUNet(filters=SMALL, decoder_dropout=(0.5, 0.3))
    with pytest.raises(ValueError, match=r"\[0, 1\), got \(1.0, 0.3, 0.2, 0.1\)"):
        DeepSupervisionUNet(filters=SMALL, decoder_dropout=(1.0, 0.3, 0.2, 0.1))


def test_urpc_bundle_regularises_the_decoder_as_the_reference() -> None:
    parser = ConfigParser()
    parser.read_config(config("urpc", "train.json"))
    net = parser.get_parsed_content("network_def")
    assert [m.p for m in net.decoder_dropout] == list(REFERENCE_DECODER_DROPOUT)
    # no element-wise dropout after the convolutions (DynUNet's `dropout` would put it on the logits too)
    assert not any(type(m) is torch.nn.Dropout for m in net.modules())


def test_one_output_is_the_plain_backbone_for_a_supervised_control() -> None:
    """``num_outputs=1``: URPC's network without its heads, for the supervised bundle on the same backbone."""
    from monai.networks.nets import DynUNet

    torch.manual_seed(0)
    net = DeepSupervisionUNet(filters=SMALL, num_outputs=1, decoder_dropout=REFERENCE_DECODER_DROPOUT).train()
    plain = DynUNet(3, 1, 3, kernel_size=[3] * 5, strides=[1, 2, 2, 2, 2], upsample_kernel_size=[2] * 4,
                    filters=list(SMALL), norm_name="instance", act_name=("leakyrelu", {"inplace": True,
                                                                                        "negative_slope": 0.01}))
    plain.load_state_dict(net.state_dict())  # strict: no supervision heads
    x = torch.randn(2, 1, 32, 32, 32)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 32, 32, 32)
    assert not torch.allclose(out, net(x))  # the decoder dropout is on in training mode
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), plain.eval()(x))
