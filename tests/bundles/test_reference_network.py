"""``configs/reference_network.json``: the SSL4MIS family's bundles on their reference code's network, one overlay
away (SSL4MIS@06df604: ``unet_3D`` for the supervised, Mean Teacher, UA-MT, ICT, entropy-minimisation, DAN and CPS
scripts; ``unet_3D_dv_semi`` and learning rate 0.1 for URPC), for training, evaluation, verification and the
released zip's inference."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser, download, run

from semiseg import verify
from semiseg.networks import UNet3D, UNet3DPyramid
from tests.bundles.conftest import BUNDLES, REPO, bundle_overrides, config
from tests.bundles.test_package import package_bundles

OVERLAY = "reference_network.json"
# bundle -> the reference script's network (SSL4MIS train_*_3D.py --model default)
REFERENCE = {b: UNet3D for b in ("supervised", "mean_teacher", "uamt", "ict", "entropy_min", "adversarial", "cps")}
REFERENCE["urpc"] = UNet3DPyramid


def _merged(bundle: str, name: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([config(bundle, name), config(bundle, OVERLAY)])
    return parser


def test_the_ssl4mis_family_has_the_overlay_and_no_other_bundle() -> None:
    assert {b for b in BUNDLES if (REPO / "bundles" / b / "configs" / OVERLAY).is_file()} == set(REFERENCE)


@pytest.mark.parametrize("bundle", sorted(REFERENCE))
def test_overlay_switches_training_and_inference_to_the_reference_network(bundle: str) -> None:
    train, inference = _merged(bundle, "train.json"), _merged(bundle, "inference.json")
    assert inference["network_def"] == train["network_def"]  # one network for training, evaluation and inference
    torch.manual_seed(0)
    network = inference.get_parsed_content("network_def")
    assert type(network) is REFERENCE[bundle]
    assert [m.p for m in network.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)] == (
        [0.5, 0.3, 0.2, 0.1] if bundle == "urpc" else [0.3, 0.3]
    )
    plain = ConfigParser()
    plain.read_config(config(bundle, "train.json"))
    # URPC's reference trains its network at 0.1 (train_uncertainty_rectified_pyramid_consistency_3D.py --base_lr);
    # the other scripts at 0.01, which the bundles already use
    expected_lr = 0.1 if bundle == "urpc" else plain.get_parsed_content("learning_rate")
    assert train.get_parsed_content("learning_rate") == expected_lr
    if bundle != "urpc":
        assert expected_lr == 0.01


def test_cps_trains_both_students_on_the_reference_network() -> None:
    train = _merged("cps", "train.json")
    train["device"] = "$torch.device('cpu')"
    assert type(train.get_parsed_content("network")) is UNet3D
    assert type(train.get_parsed_content("network_2")) is UNet3D


def _verify_merged(bundle: str, root: Path) -> list[verify.VerifyResult]:
    """``semiseg.verify`` on a copy of the bundle whose inference.json has the overlay merged in."""
    shutil.copytree(REPO / "bundles" / bundle / "configs", root / "configs")
    merged = _merged(bundle, "inference.json").get()
    (root / "configs" / "inference.json").write_text(json.dumps(merged, indent=4))
    return verify.verify_bundle(root)


@pytest.mark.parametrize("bundle", ["mean_teacher", "urpc"])
def test_verify_passes_on_the_reference_network(bundle: str, tmp_path: Path) -> None:
    """verify_metadata, verify_net_in_out at the metadata's shape, and the export (scripted for the Mean Teacher
    bundle, traced for URPC, as their ``export_use_trace``) equal to the eager network."""
    results = _verify_merged(bundle, tmp_path / bundle)
    assert [(r.check, r.error) for r in results] == [
        ("verify_metadata", None), ("verify_net_in_out", None), ("ckpt_export", None)
    ]


@pytest.mark.parametrize(("bundle", "saved"), [("urpc", "model.pt"), ("mean_teacher", "teacher.pt")])
def test_trains_and_evaluates_on_the_reference_network(
    bundle: str, saved: str, tiny_demo: Path, tmp_path: Path
) -> None:
    configs = [config(bundle, "train.json"), config(bundle, OVERLAY)]
    overrides = bundle_overrides(tiny_demo, tmp_path)
    run("training", config_file=configs, max_iterations=2, iterations_per_epoch=2, val_interval=10, **overrides)
    weights = torch.load(tmp_path / "models" / saved, weights_only=True)
    REFERENCE[bundle](1, 3).load_state_dict(weights)  # the reference network's weights, loadable as such
    run(config_file=[*configs, config(bundle, "evaluate.json")], **overrides)
    assert len(list((tmp_path / "eval").glob("*_seg.nii.gz"))) == 2


def test_released_zip_infers_with_the_reference_network_without_semiseg(tiny_demo: Path, tmp_path: Path) -> None:
    """The zip ships ``ssl4mis_unet.py`` and a rewritten ``reference_network.json``; merged with ``inference.json``
    it runs with MONAI alone (``import semiseg`` fails in the subprocess)."""
    inference = _merged("urpc", "inference.json")
    torch.manual_seed(0)
    weights = tmp_path / "model.pt"
    torch.save(inference.get_parsed_content("network_def").state_dict(), weights)
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "urpc", tmp_path / "dist", weights)
    with zipfile.ZipFile(zip_path) as zf:
        assert "urpc/scripts/semiseg/networks/ssl4mis_unet.py" in zf.namelist()
        zipped = json.loads(zf.read(f"urpc/configs/{OVERLAY}"))
    assert zipped["network_def"]["_target_"] == "scripts.semiseg.networks.ssl4mis_unet.UNet3DPyramid"

    download(name="urpc", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    bundle = tmp_path / "hub" / "urpc"
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "semiseg.py").write_text("raise ImportError('semiseg must not be needed for inference')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           f"['configs/inference.json','configs/{OVERLAY}']", "--dataset_dir", str(tiny_demo),
           "--roi_size", "[32, 32, 32]"]
    result = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    segs = sorted((bundle / "eval").glob("*_seg.nii.gz"))
    assert len(segs) == 2 and nib.load(segs[0]).shape == (32, 32, 32)
