"""The reference's training setup in every bundle: a network that is stochastic in train mode (dropout, as the
reference networks) and deterministic in eval, so student and EMA teacher see different networks every step and
UA-MT's Monte-Carlo passes differ; and batches of distinct cases (SSL4MIS's two-stream sampler: 2 labelled + 2
unlabelled cases, one crop each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundles.conftest import BUNDLES, bundle_overrides, config

# UGPCL's reference network has no dropout: its two decoders, not dropout, give the disagreement it learns from.
NO_DROPOUT = {"ugpcl"}
# URPC's reference network drops whole decoder channels (Dropout3d, 0.5 deepest .. 0.1 finest) and nothing after the
# convolutions: `dropout` 0, `decoder_dropout` on.
DECODER_DROPOUT = {"urpc"}


def _flat(output) -> torch.Tensor:
    """One tensor from a network's output: a tensor, or a list/tuple/dict of them (train-mode heads)."""
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        return torch.cat([_flat(o).flatten() for o in output])
    return output


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("name", ["train.json", "inference.json"])
def test_dropout_on_in_train_mode_and_off_in_eval(bundle: str, name: str) -> None:
    parser = ConfigParser()
    parser.read_config(config(bundle, name))
    if bundle in NO_DROPOUT:  # the reference network has none, and no teacher relies on it
        assert parser.get_parsed_content("dropout") == 0
        return
    if bundle in DECODER_DROPOUT:
        assert parser.get_parsed_content("dropout") == 0 and min(parser.get_parsed_content("decoder_dropout")) > 0
    else:
        assert parser.get_parsed_content("dropout") > 0
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    dropout_types = (torch.nn.Dropout3d,) if bundle in DECODER_DROPOUT else (torch.nn.Dropout,)
    assert any(isinstance(m, dropout_types) and m.p > 0 for m in net.modules())
    x = torch.randn(2, 1, 32, 32, 32)
    net.train()
    with torch.no_grad():  # two train-mode passes differ (pyramid/multi-head networks return several outputs)
        assert not torch.allclose(_flat(net(x)), _flat(net(x)))
    net.eval()
    with torch.no_grad():
        # equal up to floating-point wobble: Layer Ensembles' eval passes on CPU differed by about 1e-4 in one run of
        # five (cause not traced); what dropout changes is of order 1
        torch.testing.assert_close(net(x), net(x), rtol=0.0, atol=1e-3)


def test_dropout_zero_gives_the_deterministic_network() -> None:
    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "train.json"))
    parser["dropout"] = 0.0
    net = parser.get_parsed_content("network_def").train()
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net(x), net(x))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_batches_hold_distinct_cases(bundle: str, tiny_demo: Path, tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    assert (parser.get_parsed_content("batch_size"), parser["num_samples"]) == (2, 1)
    parser.update(bundle_overrides(tiny_demo, tmp_path, cache_rate=0.0, num_val=0))  # 2 labelled, 2 unlabelled
    loaders = ["train#dataloader"] + (["train#unlabelled#dataloader"] if "train#unlabelled" in parser else [])
    for key in loaders:
        loader = parser.get_parsed_content(key)
        batches = list(loader.batch_sampler)
        full = [b for b in batches if len(b) == loader.batch_size]
        # distinct cases in every batch (2 labelled; unlabelled as the bundle sets it: 2, BPL's batch_u 1)
        assert full and all(len(set(b)) == len(b) == loader.batch_size for b in full), (key, batches)
        images = next(iter(loader))["image"]
        assert images.shape[0] == len(batches[0]) * parser["num_samples"]  # one crop per case


def test_strong_views_overlay_gives_the_student_a_strong_view_and_trains(tiny_demo: Path, tmp_path: Path) -> None:
    from monai.bundle import run

    from semiseg.data.views import StrongView

    configs = [config("mean_teacher", "train.json"), config("mean_teacher", "strong_views.json")]
    parser = ConfigParser()
    parser.read_config(configs)
    assert isinstance(parser.get_parsed_content("method").student_view, StrongView)
    plain = ConfigParser()
    plain.read_config(config("mean_teacher", "train.json"))
    assert plain.get_parsed_content("method").student_view is None  # off by default: the paper's method
    run("training", config_file=configs, max_iterations=2, iterations_per_epoch=2, val_interval=10,
        **bundle_overrides(tiny_demo, tmp_path))
    assert (tmp_path / "models" / "model.pt").is_file()
