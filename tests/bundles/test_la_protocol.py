"""`configs/la.json`: the reference's left-atrium protocol (SSL4MIS / UA-MT), one overlay away, on a tiny synthetic
SSL4MIS `.h5` set: the same VNet for training, evaluation and inference."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run

from semiseg.networks.ssl4mis_vnet import VNet
from tests.bundles.conftest import BUNDLES, config


@pytest.fixture(scope="module")
def tiny_la(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six SSL4MIS-style cases (`<id>/mri_norm2.h5`, z-scored image, binary atrium-like blob), 4 train + 2 test."""
    root = tmp_path_factory.mktemp("LA")
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in (40, 40, 32)), indexing="ij"))
    ids = [f"CASE{i:02d}" for i in range(6)]
    for case_id in ids:
        centre = np.array([20, 20, 16]) + rng.integers(-4, 5, size=3)
        label = (((grid - centre[:, None, None, None]) / np.array([9, 7, 6])[:, None, None, None]) ** 2).sum(0) < 1
        image = label * 1.5 + rng.normal(0, 0.5, label.shape)
        image = (image - image.mean()) / image.std()
        (root / case_id).mkdir()
        with h5py.File(root / case_id / "mri_norm2.h5", "w") as f:
            f.create_dataset("image", data=image.astype(np.float32))
            f.create_dataset("label", data=label.astype(np.uint8))
    (root / "train.list").write_text("\n".join(ids[:4]) + "\n")
    (root / "test.list").write_text("\n".join(ids[4:]) + "\n")
    return root


# The LA network per bundle: the method's own where its reference code has one, the SSL4MIS VNet otherwise.
OWN_LA_NETWORK = {
    "urpc": "DeepSupervisionUNet", "ugpcl": "UGPCLNet", "bpl": "UNet", "layer_ensembles": "LayerEnsembles",
}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_la_overlay_sets_the_reference_protocol(bundle: str) -> None:
    train = ConfigParser()
    train.read_config([config(bundle, "train.json"), config(bundle, "la.json")])
    assert train["roi_size"] == [112, 112, 80] and train["max_iterations"] == 6000
    assert (train["batch_size"], train["num_samples"], train["num_classes"]) == (2, 1, 2)
    if bundle == "mean_teacher":  # SSL4MIS: 0.1 * sigmoid_rampup(iter // 150, 40)
        assert (train["rampup_every"], train["consistency_rampup"], train["consistency"]) == (150, 40, 0.1)
    inference = ConfigParser()
    inference.read_config([config(bundle, "inference.json"), config(bundle, "la.json")])
    assert inference["network_def"] == train["network_def"]  # one network for training, evaluation and inference
    network = inference.get_parsed_content("network_def")
    expected = OWN_LA_NETWORK.get(bundle, "VNet")
    assert type(network).__name__ == expected
    if expected in ("VNet", "LayerEnsembles"):  # the SSL4MIS VNet with dropout, bare or wrapped in heads
        vnet = network if expected == "VNet" else network.network
        assert isinstance(vnet, VNet) and vnet.has_dropout


def test_la_protocol_trains_and_evaluates_on_h5(tiny_la: Path, tmp_path: Path) -> None:
    configs = [config("mean_teacher", "train.json"), config("mean_teacher", "la.json")]
    common = {"dataset_dir": str(tiny_la), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "eval"),
              "num_labelled": 2, "roi_size": [32, 32, 32], "num_workers": 0, "overlap": 0.25, "log_every": 1}
    run("training", config_file=configs, max_iterations=2, iterations_per_epoch=2, val_interval=10, **common)
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    VNet(1, 2).load_state_dict(weights)  # the reference network's weights, loadable as such
    run(config_file=[*configs, config("mean_teacher", "evaluate.json")], **common)
    cases = sorted((tmp_path / "eval").glob("*_metrics.json"))
    assert len(cases) == 2
    assert set(json.loads(cases[0].read_text())["dice"]) >= {"left_atrium"}
    # every case keeps its own outputs, although all SSL4MIS cases are called mri_norm2.h5
    segs = sorted(p.name for p in (tmp_path / "eval").glob("*_seg.nii.gz"))
    assert segs == ["CASE04_mri_norm2_seg.nii.gz", "CASE05_mri_norm2_seg.nii.gz"]
