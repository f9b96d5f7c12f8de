"""UGPCLNet: a plain segmentation network in eval mode, UGPCL's four outputs in training mode (docs/architecture.md
§3, Wang et al., IJCAI 2022, Sec. 3)."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import swin_unetr

from semiseg.networks import UGPCLNet
from semiseg.networks.ugpcl_net import SwinStage

SMALL = {"features": (4, 4, 8, 8, 16, 4), "tf_dim": 6, "tf_num_heads": (1, 2), "embed_dim": 8}


def test_training_outputs_and_eval_logits() -> None:
    torch.manual_seed(0)
    net = UGPCLNet(in_channels=1, out_channels=3, **SMALL)
    x = torch.randn(2, 1, 32, 32, 32)
    out = net.train()(x)
    assert set(out) == {"seg", "seg_tf", "embed", "cls"}
    assert out["seg"].shape == out["seg_tf"].shape == (2, 3, 32, 32, 32)
    assert out["embed"].shape == (2, 8, 8, 8, 8)  # projection at 1/4 of the input size
    assert torch.allclose(out["embed"].norm(dim=1), torch.ones(2, 8, 8, 8), atol=1e-5)  # L2-normalised per voxel
    assert out["cls"].shape == (2, 4)
    # eval: the CNN decoder's logits only (instance norm without running stats, no dropout: same as in training)
    logits = net.eval()(x)
    assert isinstance(logits, torch.Tensor) and torch.allclose(logits, out["seg"], atol=1e-5)


def test_every_part_gets_a_gradient_in_training_mode() -> None:
    net = UGPCLNet(**SMALL).train()
    out = net(torch.randn(2, 1, 32, 32, 32))
    sum(v.float().mean() for v in out.values()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing, missing  # DDP needs no find_unused_parameters


def test_bad_input_size_is_named() -> None:
    with pytest.raises(ValueError, match="divisible by 16"):
        UGPCLNet(**SMALL)(torch.randn(1, 1, 24, 32, 32))
    with pytest.raises(ValueError, match="6 channel counts"):
        UGPCLNet(features=(4, 8, 16))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SwinStage(dim=6, depth=2, num_heads=4)


def test_swin_stage_equals_monai_basic_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """SwinStage runs MONAI's SwinTransformerBlocks exactly as MONAI's BasicLayer does (which needs einops)."""

    orders = {"b c d h w -> b d h w c": (0, 2, 3, 4, 1), "b d h w c -> b c d h w": (0, 4, 1, 2, 3)}

    def rearrange(x: torch.Tensor, pattern: str) -> torch.Tensor:  # the two einops patterns BasicLayer uses
        return x.permute(*orders[pattern])

    monkeypatch.setattr(swin_unetr, "rearrange", rearrange)
    torch.manual_seed(0)
    ours = SwinStage(dim=8, depth=2, num_heads=2, window_size=4, drop_path=0.0).eval()
    theirs = swin_unetr.BasicLayer(dim=8, depth=2, num_heads=2, window_size=(4, 4, 4), drop_path=[0.0, 0.0],
                                   qkv_bias=True).eval()
    theirs.load_state_dict(ours.state_dict())  # same block structure, same parameter names
    x = torch.randn(2, 8, 8, 6, 5)  # a size that is not a multiple of the window: padded, shifted windows masked
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
