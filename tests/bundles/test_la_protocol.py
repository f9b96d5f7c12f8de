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

from semiseg.handlers import BudgetLrScheduleHandler
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
# The bundles of the SSL4MIS family, whose LA protocol is UA-MT's to the loss (yulequan/UA-MT@88ed29a,
# code/train_LA_meanteacher_certainty_unlabel.py, train_LA.py, test_LA.py, dataloaders/la_heart.py).
SSL4MIS_FAMILY = ("supervised", "mean_teacher", "uamt", "ict", "entropy_min", "urpc", "adversarial", "cps")
WITH_RAMP = tuple(b for b in SSL4MIS_FAMILY if b != "supervised")
NORMALISERS = ("ScaleIntensityRangePercentilesd", "NormalizeIntensityd")


def _merged(bundle: str, *names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([config(bundle, name) for name in names])
    return parser


def _names(compose) -> list[str]:
    return [type(t).__name__ for t in compose.transforms]


def _uamt_supervised(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """UA-MT's ``0.5 * (F.cross_entropy(outputs, label) + dice_loss(softmax(outputs)[:, 1], label == 1))``
    (train_LA_meanteacher_certainty_unlabel.py lines 166-169; utils/losses.py ``dice_loss``, lines 5-13)."""
    score, target = torch.softmax(logits, 1)[:, 1], (labels[:, 0] == 1).float()
    dice = 1 - (2 * (score * target).sum() + 1e-5) / ((score * score).sum() + (target * target).sum() + 1e-5)
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels[:, 0]) + dice)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_la_overlay_sets_the_reference_protocol(bundle: str) -> None:
    train = _merged(bundle, "train.json", "la.json")
    assert train["roi_size"] == [112, 112, 80] and train["max_iterations"] == 6000
    # UA-MT: batch 4 = 2 labelled + 2 unlabelled cases (its supervised baseline, train_LA.py: 4 labelled)
    assert (train["batch_size"], train["num_samples"], train["num_classes"]) == (
        4 if bundle == "supervised" else 2, 1, 2)
    assert (train["num_labelled"], train["num_val"]) == (16, 0)
    # the final weights are tested (test_LA.py: iter_6000.pth), no validation, no best-validation weights
    assert train["save_best"] is False
    assert _merged(bundle, "train.json", "la.json", "evaluate.json")["model_file"] == "$@ckpt_dir + '/model.pt'"
    # the already normalised .h5 volumes read as they are; uniform crops with RandomRotFlip's quarter turns (the
    # UGPCL reference turns rotation off); sliding window with test_LA.py's strides 18, 18, 4, plain averaging
    assert (train["intensity_norm"], train["label_crop"]) == ("none", "uniform")
    assert train["rot90"] is (bundle != "ugpcl")
    assert (train["overlap"], train["blend_mode"]) == ([0.839, 0.839, 0.95], "constant")
    # the learning rate divided by 10 every 2500 iterations (a step schedule, not poly), for every optimiser
    for name in ("lr_scheduler", "lr_scheduler_2"):
        if name not in train:
            continue
        scheduler = train.get_parsed_content(name)
        assert type(scheduler).__name__ == "StepLR"
        BudgetLrScheduleHandler(scheduler)  # the template's handler steps it as it is, whatever the budget
        rates = []
        for _ in range(6000):
            rates.append(scheduler.optimizer.param_groups[0]["lr"])
            scheduler.optimizer.step()  # no gradients: nothing moves
            scheduler.step()
        base = train["learning_rate"]  # UA-MT's 0.01 (SGD, momentum 0.9, wd 1e-4), the template's; BPL keeps its own
        assert base == 0.01 or bundle not in SSL4MIS_FAMILY
        assert rates[0] == rates[2499] == pytest.approx(base)
        assert rates[2500] == rates[4999] == pytest.approx(base * 0.1)
        assert rates[5000] == rates[5999] == pytest.approx(base * 0.01)
    inference = _merged(bundle, "inference.json", "la.json")
    assert inference["network_def"] == train["network_def"]  # one network for training, evaluation and inference
    network = inference.get_parsed_content("network_def")
    expected = OWN_LA_NETWORK.get(bundle, "VNet")
    assert type(network).__name__ == expected
    if expected in ("VNet", "LayerEnsembles"):  # the SSL4MIS VNet with dropout, bare or wrapped in heads
        vnet = network if expected == "VNet" else network.network
        assert isinstance(vnet, VNet) and vnet.has_dropout


@pytest.mark.parametrize("bundle", SSL4MIS_FAMILY)
def test_la_overlay_takes_uamt_loss_noise_and_ramp(bundle: str) -> None:
    train = _merged(bundle, "train.json", "la.json")
    method = train.get_parsed_content("method")
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 2, 6, 6, 4), (torch.rand(2, 1, 6, 6, 4) > 0.7).long()
    # foreground-only Dice (UA-MT), not the all-class Dice of SSL4MIS
    assert method.supervised_loss(logits, labels).item() == pytest.approx(_uamt_supervised(logits, labels).item(),
                                                                           abs=1e-6)
    if bundle in WITH_RAMP:  # UA-MT: 0.1 * sigmoid_rampup(iter // 150, 40) (lines 39, 64-66, 171)
        assert (train["consistency"], train["rampup_every"], train["consistency_rampup"]) == (0.1, 150, 40)
        handler = train.get_parsed_content("consistency_rampup_handler")
        assert (handler.every, handler.length) == (150, 40)
    if bundle in ("mean_teacher", "uamt"):  # clamp(0.1 N, -0.2, 0.2) added as it is (lines 146, 156)
        assert method.noise_scale == "absolute"
        assert _merged(bundle, "train.json").get_parsed_content("method").noise_scale == "image_std"


def test_la_transforms_and_sliding_window_are_uamts() -> None:
    train = _merged("mean_teacher", "train.json", "la.json")
    labelled = _names(train.get_parsed_content("train#preprocessing"))
    unlabelled = _names(train.get_parsed_content("train#unlabelled#preprocessing"))
    for names in (labelled, unlabelled):
        assert not set(names) & set(NORMALISERS)  # no re-normalisation of the normalised .h5 volumes
        assert "RandSpatialCropSamplesd" in names and "RandCropByPosNegLabeld" not in names  # uniform crops
        assert "RandRotate90d" in names
    turns = next(t for t in train.get_parsed_content("train#preprocessing").transforms
                 if type(t).__name__ == "RandRotate90d")
    assert tuple(turns.spatial_axes) == (0, 1) and turns.max_k == 3  # np.rot90(image, k), k in 0..3: axes 0, 1
    assert not set(_names(train.get_parsed_content("validate#preprocessing"))) & set(NORMALISERS)
    inferer = train.get_parsed_content("validate#inferer")
    assert inferer.mode == "constant" and list(inferer.overlap) == [0.839, 0.839, 0.95]
    # the released inference.json merged with la.json: the same window, no normalisation either
    inference = _merged("mean_teacher", "inference.json", "la.json")
    assert not set(_names(inference.get_parsed_content("preprocessing"))) & set(NORMALISERS)
    assert inference.get_parsed_content("inferer").mode == "constant"


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
