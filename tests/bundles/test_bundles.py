"""Smoke tests per bundle, as the model-zoo CI does: training, evaluate and inference through `monai.bundle run`
for a few iterations on small demo data, plus the metadata and network I/O checks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, run, verify_metadata, verify_net_in_out

from semiseg.data import DataValidationError
from semiseg.data.demo import SPACING_MM
from semiseg.reporting import read_metric_csvs
from tests.bundles.conftest import BUNDLES, REPO, config, restore_fresh
from tests.bundles.conftest import bundle_overrides as _overrides
from tests.helpers import states_equal


@pytest.mark.parametrize("bundle", BUNDLES)
def test_training_evaluate_inference(bundle: str, tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path)
    run("training", config_file=config(bundle, "train.json"), max_iterations=3, iterations_per_epoch=2,
        val_interval=1, **common)
    models = tmp_path / "models"
    assert (models / "model.pt").is_file() and (models / "checkpoint.pt").is_file()
    checkpoint = torch.load(models / "checkpoint.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 3  # max_iterations exactly: 3 epochs of 1 (epoch_length_for)
    expected = set(json.loads(Path(config(bundle, "train.json")).read_text())["checkpoint"]["objects"])
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= expected and set(checkpoint) == expected
    if bundle == "mean_teacher":
        assert {"teacher", "rampup"} <= expected
    # every part restored exactly into fresh objects built from the config (what --resume true does)
    restored = restore_fresh(
        [config(bundle, "train.json")], {**common, "max_iterations": 3, "iterations_per_epoch": 2},
        check_differs=lambda objs: not states_equal(objs["model"].state_dict(), checkpoint["model"]),
    )
    for key in expected:
        assert states_equal(dict(restored[key].state_dict()), dict(checkpoint[key])), f"{key} not restored exactly"

    run(config_file=[config(bundle, "train.json"), config(bundle, "evaluate.json")], **common)
    # foreground classes as the bundle names them: organ, lesion (softmax bundles) or one class (a binary bundle)
    names = json.loads(Path(config(bundle, "train.json")).read_text())["class_names"][1:]
    with open(tmp_path / "eval" / "dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {f"class{i}" for i in range(len(names))} <= set(rows[0])
    for metric in ("dice", "hd95", "asd", "misses"):
        assert (tmp_path / "eval" / f"{metric}_summary.csv").is_file()
    case = json.loads((tmp_path / "eval" / "test_000_metrics.json").read_text())
    assert case["image"].endswith("test_000.nii.gz")
    assert set(case) == {"image", "spacing_mm", "miss_penalty_mm", "units", "dice", "hd95", "asd", "misses"}
    assert set(case["dice"]) == {*names, "mean"}
    assert case["dice"][names[0]] == pytest.approx(float(rows[0]["class0"]), abs=1e-4)
    # distances in mm from the image's own spacing; a missed or spurious class scores the image diagonal, never null
    assert case["units"] == {"dice": "fraction", "hd95": "mm", "asd": "mm", "misses": "count"}
    assert case["spacing_mm"] == pytest.approx([SPACING_MM] * 3)
    assert case["miss_penalty_mm"] == pytest.approx(SPACING_MM * 32 * 3**0.5)
    assert case["misses"]["total"] == sum(case["misses"][name] for name in names)
    for name in names:
        for metric in ("hd95", "asd"):
            value = case[metric][name]
            assert 0.0 <= value <= case["miss_penalty_mm"]
            assert (value == pytest.approx(case["miss_penalty_mm"])) == bool(case["misses"][name]), (metric, name)
    summary = read_metric_csvs(tmp_path / "eval", tuple(names))
    assert summary["units"]["hd95"] == "mm" and set(summary["misses"]) == {*names, "total"}

    infer_out = tmp_path / "infer"
    run(config_file=config(bundle, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(models),
        output_dir=str(infer_out), roi_size=[32, 32, 32])
    seg = nib.load(infer_out / "test_000_seg.nii.gz")
    entropy = nib.load(infer_out / "test_000_entropy.nii.gz").get_fdata()
    image = nib.load(tiny_demo / "imagesTs" / "test_000.nii.gz")
    assert seg.shape == image.shape and np.allclose(seg.affine, image.affine)
    assert set(np.unique(seg.get_fdata())) <= set(range(len(names) + 1))
    assert 0.0 <= entropy.min() and entropy.max() <= 1.0 + 1e-5

    if (models / "teacher.pt").is_file():  # what users would deploy: the EMA teacher is evaluated and inferred too
        teacher_eval = {**common, "output_dir": str(tmp_path / "eval_teacher"),
                        "model_file": str(models / "teacher.pt")}
        run(config_file=[config(bundle, "train.json"), config(bundle, "evaluate.json")], **teacher_eval)
        provenance = json.loads((tmp_path / "eval_teacher" / "provenance.json").read_text())
        assert "teacher.pt" in json.dumps(provenance) and (tmp_path / "eval_teacher" / "dice_raw.csv").is_file()
        run(config_file=config(bundle, "inference.json"), dataset_dir=str(tiny_demo), ckpt_dir=str(models),
            model_file=str(models / "teacher.pt"), output_dir=str(tmp_path / "infer_teacher"), roi_size=[32, 32, 32])
        assert (tmp_path / "infer_teacher" / "test_000_seg.nii.gz").is_file()


def test_cli_run_without_run_id(tiny_demo: Path, tmp_path: Path) -> None:
    """`python -m monai.bundle run --config_file train.json` (no `training`) trains too."""
    args = []
    for key, value in _overrides(tiny_demo, tmp_path, max_iterations=1).items():
        args += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config("mean_teacher", "train.json"), *args]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_missing_dataset_dir_fails_early_with_its_name(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(RuntimeError) as info:
        run("training", config_file=config("mean_teacher", "train.json"), dataset_dir=str(missing),
            ckpt_dir=str(tmp_path / "m"), output_dir=str(tmp_path / "e"), num_workers=0)
    chain = []
    err: BaseException | None = info.value
    while err is not None:
        chain.append(err)
        err = err.__cause__
    data_errors = [e for e in chain if isinstance(e, DataValidationError)]
    assert data_errors and str(missing) in str(data_errors[0])


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_offline(bundle: str) -> None:
    schema = REPO / "schemas" / "meta_schema_20240725.json"
    verify_metadata(meta_file=config(bundle, "metadata.json"), filepath=str(schema))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_io_matches_metadata(bundle: str) -> None:
    verify_net_in_out(net_id="network_def", meta_file=config(bundle, "metadata.json"),
                      config_file=config(bundle, "inference.json"), device="cpu")


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_config_needs_only_monai(bundle: str) -> None:
    """A released bundle runs inference with nothing but MONAI: inference.json refers only to semiseg code that
    scripts/package_bundles.py ships in the zip (whose inference.json refers to scripts.semiseg instead)."""
    from tests.bundles.test_package import package_bundles

    zipped, _ = package_bundles.rewrite_inference_config(json.loads(Path(config(bundle, "inference.json")).read_text()))
    assert "semiseg" not in json.dumps(zipped).replace("scripts.semiseg.", "")
    parser = ConfigParser()
    parser.read_config(config(bundle, "inference.json"))
    for key in ("network_def", "preprocessing", "inferer", "postprocessing", "evaluator", "run", "bundle_root",
                "device"):
        assert key in parser, key


@pytest.mark.parametrize("bundle", BUNDLES)
def test_inference_preprocessing_equals_training_eval_transforms(bundle: str, tiny_demo: Path) -> None:
    """Inference (MONAI alone) normalises as training's evaluation chain does, for every ``intensity_norm``."""
    from semiseg.data.transforms import INTENSITY_NORMS, eval_transforms

    path = str(tiny_demo / "imagesTs" / "test_001.nii.gz")
    train = ConfigParser()
    train.read_config(config(bundle, "train.json"))
    for norm in INTENSITY_NORMS:
        parser = ConfigParser()
        parser.read_config(config(bundle, "inference.json"))
        assert parser["intensity_norm"] == train["intensity_norm"]
        parser["intensity_norm"] = norm
        train["validate#preprocessing#intensity_norm"] = norm
        train["validate#preprocessing#with_label"] = False
        ours = train.get_parsed_content("validate#preprocessing", lazy=False)({"image": path})["image"]
        theirs = parser.get_parsed_content("preprocessing")({"image": path})["image"]
        assert ours.shape == theirs.shape, norm
        assert torch.allclose(ours.as_tensor(), theirs.as_tensor(), atol=1e-6), norm
        if norm != "none":
            direct = eval_transforms(with_label=False, intensity_norm=norm)({"image": path})["image"]
            assert not torch.allclose(direct.as_tensor(), eval_transforms(with_label=False, intensity_norm="none")(
                {"image": path})["image"].as_tensor()), norm


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_config_has_the_ids_tools_look_up(bundle: str) -> None:
    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    for key in ("training", "run", "network_def", "network", "train#trainer", "train#handlers",
                "train#dataset#data", "validate#dataset#data", "train#trainer#max_epochs", "validate#evaluator",
                "dataset_dir", "bundle_root", "ckpt_dir"):
        assert key in parser, key
    if bundle not in ("supervised", "layer_ensembles"):  # the supervised-only bundles have no unlabelled list
        assert "train#unlabelled#dataset#data" in parser


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_overlay_only_overrides_existing_ids(bundle: str) -> None:
    train = ConfigParser()
    train.read_config(config(bundle, "train.json"))
    overlay = json.loads(Path(config(bundle, "multi_gpu_train.json")).read_text())
    new_ids = {"finalize", "dist_backend", "ddp_device_ids"}  # may be added; the rest must override train.json ids
    for key in overlay:
        if key in new_ids or key in train:
            continue
        parent, _, leaf = key.rpartition("#")
        assert leaf == "sampler" and parent in train, f"multi_gpu_train.json overrides {key!r}, absent from train.json"
    merged = ConfigParser()
    merged.read_config([config(bundle, "train.json"), config(bundle, "multi_gpu_train.json")])
    assert merged["train#dataloader#sampler"] == "@train#sampler"
