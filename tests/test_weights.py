"""``init_from``: starting a bundle from another bundle's (or a model-zoo) weights (semiseg.weights)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import UNet
from torch import nn

from semiseg.weights import InitWeightsError, load_initial_weights, read_state_dict
from tests.bundles.conftest import config
from tests.helpers import states_equal


def _unet(seed: int, out_channels: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(3, 1, out_channels, (4, 8, 16), (2, 2), num_res_units=1)


def test_plain_state_dict_loads_exactly(tmp_path: Path) -> None:
    source, target = _unet(0), _unet(1)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    assert not states_equal(source.state_dict(), target.state_dict())
    assert load_initial_weights(target, tmp_path / "model.pt") is target
    assert states_equal(source.state_dict(), target.state_dict())


def test_none_and_empty_change_nothing() -> None:
    net = _unet(0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for value in (None, ""):
        load_initial_weights(net, value)
        assert states_equal(before, net.state_dict())


def test_checkpoint_with_model_key_and_ddp_prefix(tmp_path: Path) -> None:
    source, target = _unet(0), _unet(1)
    ddp_style = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"model": ddp_style, "optimizer": {"state": {}}, "trainer": {"iteration": 3}}, tmp_path / "ckpt.pt")
    load_initial_weights(target, tmp_path / "ckpt.pt")
    assert states_equal(source.state_dict(), target.state_dict())


def test_bundle_folder_and_bundle_zip(tmp_path: Path) -> None:
    source = _unet(0)
    (tmp_path / "bundle" / "models").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "bundle" / "models" / "model.pt")
    target = load_initial_weights(_unet(1), tmp_path / "bundle")
    assert states_equal(source.state_dict(), target.state_dict())

    with zipfile.ZipFile(tmp_path / "supervised_v0.1.0.zip", "w") as archive:
        archive.write(tmp_path / "bundle" / "models" / "model.pt", "supervised/models/model.pt")
        archive.writestr("supervised/configs/metadata.json", "{}")
    target = load_initial_weights(_unet(2), tmp_path / "supervised_v0.1.0.zip")
    assert states_equal(source.state_dict(), target.state_dict())

    with zipfile.ZipFile(tmp_path / "no_weights.zip", "w") as archive:
        archive.writestr("supervised/configs/metadata.json", "{}")
    with pytest.raises(InitWeightsError, match="packaged without weights"):
        read_state_dict(tmp_path / "no_weights.zip")
    with pytest.raises(InitWeightsError, match="no models/model.pt"):
        read_state_dict(tmp_path)


def test_wrapped_network_matches_by_common_prefix(tmp_path: Path) -> None:
    source = _unet(0)
    torch.save(source.state_dict(), tmp_path / "model.pt")
    wrapper = nn.Sequential()
    wrapper.add_module("net", _unet(1))  # keys "net.model...." = "net." + the source's keys
    load_initial_weights(wrapper, tmp_path / "model.pt")
    assert states_equal(source.state_dict(), wrapper.net.state_dict())
    # and the other way round: weights of a wrapped network into the plain one
    torch.save(wrapper.state_dict(), tmp_path / "wrapped.pt")
    plain = load_initial_weights(_unet(3), tmp_path / "wrapped.pt")
    assert states_equal(source.state_dict(), plain.state_dict())


def test_shape_mismatch_names_the_tensors(tmp_path: Path) -> None:
    torch.save(_unet(0, out_channels=2).state_dict(), tmp_path / "binary.pt")
    with pytest.raises(InitWeightsError, match=r"differ in shape \(.*\(2, .*in the source, \(3, .*here") as info:
        load_initial_weights(_unet(1, out_channels=3), tmp_path / "binary.pt")
    assert "num_classes" in str(info.value)


def test_missing_tensors_strict_and_not(tmp_path: Path) -> None:
    source, target = _unet(0), _unet(1)
    partial = {k: v for k, v in source.state_dict().items() if "bias" not in k}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(InitWeightsError, match="lacks .* init_strict=false"):
        load_initial_weights(target, tmp_path / "partial.pt")
    before = {k: v.clone() for k, v in target.state_dict().items()}
    load_initial_weights(target, tmp_path / "partial.pt", strict=False)
    for key, value in target.state_dict().items():
        expected = partial[key] if key in partial else before[key]
        assert torch.equal(value, expected), key


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"not a torch file", "not a readable PyTorch weights file"), (None, "does not exist")],
)
def test_unreadable_or_missing_source(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InitWeightsError, match=match):
        load_initial_weights(_unet(0), path)


def test_unrelated_weights_share_no_tensor(tmp_path: Path) -> None:
    torch.save(nn.ModuleDict({"classifier": nn.Linear(3, 2)}).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(InitWeightsError, match="shares no tensor name"):
        load_initial_weights(_unet(0), tmp_path / "linear.pt")


def test_mean_teacher_student_and_teacher_start_from_supervised_weights(tmp_path: Path) -> None:
    """The bundle-level path: ``--init_from`` a supervised bundle's model.pt (a MONAI UNet state dict, as a
    model-zoo bundle would have) into Mean Teacher; the EMA teacher, a copy of the student, starts from it too."""
    parser = ConfigParser()
    parser.read_config(config("supervised", "train.json"))
    parser.update({"device": "$torch.device('cpu')"})
    supervised = parser.get_parsed_content("network")
    torch.save(supervised.state_dict(), tmp_path / "model.pt")

    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "train.json"))
    parser.update({"device": "$torch.device('cpu')", "init_from": str(tmp_path / "model.pt")})
    student = parser.get_parsed_content("network")
    teacher = parser.get_parsed_content("ema_teacher").teacher
    assert states_equal(supervised.state_dict(), student.state_dict())
    assert states_equal(supervised.state_dict(), teacher.state_dict())
