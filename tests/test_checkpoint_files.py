"""Weights and checkpoint files are read before a run loads them, and fail in one line naming the file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from semiseg.bundle_checks import check_network_input
from semiseg.checkpoint_files import CheckpointFileError, read_checkpoint, state_dict_of, state_dict_problem
from semiseg.errors import SettingError, format_user_error
from tests.bundles.conftest import BUNDLES, config


def _saved(tmp_path: Path, obj: object, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


def test_a_good_file_is_read_as_saved(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 3)
    state = read_checkpoint(_saved(tmp_path, {"model": net.state_dict(), "trainer": {"iteration": 4}}))
    assert state_dict_problem(state_dict_of(state), net, tmp_path / "model.pt") is None
    assert state_dict_of(net.state_dict()).keys() == net.state_dict().keys()  # a bare state dict is the state dict


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "is empty (0 bytes)"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "cannot be read: it is truncated or corrupt"),
        (lambda p: p.write_text("not a checkpoint"), "cannot be read: it is truncated or corrupt, or not a PyTorch"),
        (lambda p: torch.save({"model": pickle.dumps}, p), "holds pickled Python objects beyond tensors"),
        (lambda p: p.unlink(), "does not exist"),
    ],
    ids=["empty", "truncated", "text", "pickle", "missing"],
)
def test_a_bad_file_fails_in_one_line_naming_it(tmp_path: Path, make, message: str) -> None:
    path = _saved(tmp_path, torch.nn.Linear(2, 3).state_dict())
    make(path)
    with pytest.raises(CheckpointFileError) as info:
        read_checkpoint(path, "weights file")
    assert f"weights file {path} " in str(info.value) and message in str(info.value)
    assert len(format_user_error(info.value).strip().splitlines()) == 1


def test_weights_of_another_network_or_class_count_are_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    other = state_dict_problem(torch.nn.Conv1d(2, 3, 1).state_dict() | {"extra": torch.zeros(1)},
                               torch.nn.Sequential(torch.nn.Linear(2, 3)), path)
    assert other is not None and "2 of the network's 2 tensors are missing (e.g. 0.weight)" in other
    assert "it has 3 tensors the network does not" in other and "weights of another network or bundle" in other
    shape = state_dict_problem(torch.nn.Linear(2, 3).state_dict(), torch.nn.Linear(2, 2), path)
    assert shape is not None and "2 tensor(s) differ in shape (weight: (3, 2) in the file, (2, 2) here" in shape
    assert "another num_classes" in shape
    ddp = {f"module.{k}": v for k, v in torch.nn.Linear(2, 3).state_dict().items()}
    assert state_dict_problem(ddp, torch.nn.Linear(2, 3), path) is None  # saved from a DistributedDataParallel
    assert "not a state dict" in str(state_dict_problem({"epoch": 3}, torch.nn.Linear(2, 3), path))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_network_takes_its_roi_size_and_refuses_an_odd_one(bundle: str) -> None:
    """The rule comes from the network (a forward pass on the meta device), so a new network needs no table."""
    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    network = parser.get_parsed_content("network_def")
    assert check_network_input(network, parser["roi_size"], parser["in_channels"]) is True
    with pytest.raises(SettingError) as info:
        check_network_input(network, [33, 33, 33], parser["in_channels"])
    message = str(info.value)
    assert message.startswith(f"setting roi_size [33, 33, 33] does not fit the network: {type(network).__name__}")
    assert "each side must be a multiple of" in message and '--roi_size "[32, 32, 32]"' in message


def test_the_network_input_rule_is_asked_of_the_network() -> None:
    class Strided(torch.nn.Module):
        """Needs sides divisible by 4, and says so in its own error."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if any(s % 4 for s in x.shape[2:]):
                raise ValueError("sides must be divisible by 4")
            return x

    with pytest.raises(SettingError, match=r"each side must be a multiple of 4 for Strided: e\.g\. --roi_size "
                                           r"\"\[20, 20, 20\]\" or --roi_size \"\[24, 24, 24\]\""):
        check_network_input(Strided(), [22, 22, 22])
    declared = Strided()
    declared.size_divisor = 8  # a network that declares its rule is taken at its word for the message
    with pytest.raises(SettingError, match="multiple of 8"):
        check_network_input(declared, [22, 22, 22])
    assert check_network_input(None, [3, 3, 3]) is True
