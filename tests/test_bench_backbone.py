"""``scripts/bench/bench_methods.py``: the supervised bundle on a method's own backbone is that backbone, no more."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[1]


def _bench_methods():
    spec = importlib.util.spec_from_file_location("bench_methods", REPO / "scripts" / "bench" / "bench_methods.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parser(bundle: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    return parser


@pytest.mark.parametrize("owner", ["urpc", "ugpcl"])
def test_same_backbone_is_the_owners_network_without_its_extra_parts(owner: str) -> None:
    bench = _bench_methods()
    owner_parser = _parser(owner)
    supervised = _parser("supervised")
    supervised["network_def"] = bench.same_backbone(owner_parser, owner)
    control = supervised.get_parsed_content("network_def")
    full = owner_parser.get_parsed_content("network_def")
    control_state, full_state = control.state_dict(), full.state_dict()
    extra = set(full_state) - set(control_state)
    assert set(control_state) < set(full_state)  # every backbone tensor is the owner's, with its shape
    assert all(full_state[k].shape == v.shape for k, v in control_state.items())
    if owner == "urpc":  # less the deep-supervision heads; the same decoder dropout
        assert all("super_head" in k or k.startswith("deep_supervision_heads.") for k in extra)
        assert [m.p for m in control.decoder_dropout] == [m.p for m in full.decoder_dropout] == [0.5, 0.3, 0.2, 0.1]
    else:  # less the transformer decoder, the projection head and the rotation head
        assert {k.split(".")[0] for k in extra} == {"tf_decoder", "embed_head", "cls_head"}
    assert supervised.get()["network_def"]["dropout"] == owner_parser.get_parsed_content("dropout")
