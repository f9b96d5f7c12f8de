"""``ensure_mode``: the same modes as ``Module.train``, without walking the tree when nothing changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from semiseg.modes import ensure_mode


class Counting(nn.Sequential):
    """A network that counts its ``train`` calls (``eval`` is ``train(False)``)."""

    calls = 0

    def train(self, mode: bool = True) -> Counting:
        Counting.calls += 1
        return super().train(mode)


def _net() -> Counting:
    Counting.calls = 0
    return Counting(nn.Conv3d(1, 2, 3), nn.Sequential(nn.Dropout3d(0.3), nn.InstanceNorm3d(2)), nn.Conv3d(2, 3, 1))


def _modes(net: nn.Module) -> list[bool]:
    return [m.training for m in net.modules()]


def test_already_in_mode_is_not_walked_again() -> None:
    net = _net()  # modules start in train mode
    assert ensure_mode(net, True) is net and Counting.calls == 0
    net.eval()
    calls = Counting.calls
    ensure_mode(net, False)
    assert Counting.calls == calls and not any(_modes(net))


@pytest.mark.parametrize("mode", [True, False])
def test_one_submodule_in_the_other_mode_switches_the_whole_tree(mode: bool) -> None:
    net = _net()
    net.train(mode)
    net[1][0].train(not mode)  # only the dropout, deep inside: the root's own flag still says `mode`
    assert net.training is mode
    ensure_mode(net, mode)
    assert _modes(net) == [mode] * 6


def test_switching_gives_the_same_flags_and_outputs_as_module_train() -> None:
    torch.manual_seed(0)
    net, reference = _net(), _net()
    reference.load_state_dict(net.state_dict())
    net.eval(), reference.eval()
    ensure_mode(net, True), reference.train()
    assert _modes(net) == _modes(reference) == [True] * 6
    x = torch.randn(1, 1, 6, 6, 6)
    torch.manual_seed(1)
    a = net(x)
    torch.manual_seed(1)
    b = reference(x)
    assert torch.equal(a, b)  # dropout active in both, same mask
    ensure_mode(net, 0)  # falsy like Module.train's `mode`
    assert not any(_modes(net))
