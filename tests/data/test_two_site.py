"""The demo's ``two_site`` scenario: labels from site A, unlabelled and test images from site B (docs/data.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from semiseg.data import load_datalist
from semiseg.data.demo import (
    SITE_A_PROTOCOL,
    SITE_B_PROTOCOL,
    SPACING_MM,
    make_scenario,
    make_two_site_dataset,
    render_case,
    sample_case_params,
)

REPO = Path(__file__).resolve().parents[2]
APPEARANCE = {"organ_contrast", "lesion_contrast", "vessel_factor", "rim_mean", "bias_strength", "noise_sigma",
              "spacing_mm"}
"""The Protocol fields in which site B differs from site A; every other field (anatomy) is shared."""


@pytest.fixture(scope="module")
def two_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_site") / "demo_two_site"
    make_two_site_dataset(root, num_labelled=2, num_val=1, num_unlabelled=3, num_oracle_val=1, num_test=2,
                          shape=(32, 32, 32))
    return root


def test_sites_share_the_anatomy_generator_and_differ_in_the_stated_appearance() -> None:
    differing = {f.name for f in fields(SITE_A_PROTOCOL)
                 if getattr(SITE_A_PROTOCOL, f.name) != getattr(SITE_B_PROTOCOL, f.name)}
    assert differing == APPEARANCE
    a, b = SITE_A_PROTOCOL, SITE_B_PROTOCOL
    assert a.lesion_contrast[0] > 0 > b.lesion_contrast[1]  # lesion brighter than the organ on A, darker on B
    assert b.organ_contrast[0] + b.lesion_contrast[0] > 0  # on B still brighter than the body
    assert b.bias_strength[0] > a.bias_strength[1] and b.noise_sigma[0] >= a.noise_sigma[1]
    assert a.spacing_mm == (SPACING_MM, SPACING_MM) and b.spacing_mm[1] < SPACING_MM


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lesion_organ_order_of_brightness_flips_between_sites(seed: int) -> None:
    """Rendered without bias field and noise (the acquisition), site A's lesions are brighter than its organ and
    site B's darker, for the same draw of anatomy."""
    for protocol, brighter in ((SITE_A_PROTOCOL, True), (SITE_B_PROTOCOL, False)):
        params = sample_case_params(np.random.default_rng(seed), protocol, (32, 32, 32))
        image, label = render_case(replace(params, bias_strength=0.0, noise_sigma=0.0, texture_scale=0.0))
        lesion, organ = np.median(image[label == 2]), np.median(image[label == 1])
        assert (lesion > organ) == brighter, (protocol.lesion_contrast, lesion, organ)


def test_site_b_is_finer_so_the_same_anatomy_spans_more_voxels() -> None:
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    a = sample_case_params(rng_a, replace(SITE_B_PROTOCOL, spacing_mm=(SPACING_MM, SPACING_MM)), (32, 32, 32))
    b = sample_case_params(rng_b, replace(SITE_B_PROTOCOL, spacing_mm=(1.25, 1.25)), (32, 32, 32))
    assert b.spacing_mm == 1.25 and a.spacing_mm == SPACING_MM
    assert np.allclose(np.asarray(b.organ_radii) / np.asarray(a.organ_radii), SPACING_MM / 1.25)


def test_lists_are_site_pure_and_disjoint(two_site: Path) -> None:
    meta = json.loads((two_site / "dataset.json").read_text())
    oracle = two_site.with_name(two_site.name + "_oracle")
    oracle_meta = json.loads((oracle / "dataset.json").read_text())

    def spacing(root: Path, entry: dict) -> float:
        return float(nib.load(str(root / entry["image"])).header.get_zooms()[0])

    assert len(meta["training"]) == 3  # exactly the labelled budget plus the validation cases
    assert all(Path(e["image"]).name.startswith("a_case_") for e in meta["training"])
    assert all(spacing(two_site, e) == pytest.approx(SPACING_MM) for e in meta["training"])
    for key in ("unlabeled", "test"):
        assert all(Path(e["image"]).name.startswith("b_") for e in meta[key]), key
        assert all(1.2 <= spacing(two_site, e) <= 1.35 for e in meta[key]), key
    assert all("label" not in e for e in meta["unlabeled"])
    images = [e["image"] for key in ("training", "unlabeled", "test") for e in meta[key]]
    assert len(images) == len(set(images))
    # the oracle labels the same site-B images (and one more for its validation), and scores the same test cases
    assert [Path(e["image"]).name for e in oracle_meta["training"][:3]] == [Path(e["image"]).name
                                                                           for e in meta["unlabeled"]]
    for ours, theirs in zip(meta["unlabeled"], oracle_meta["training"]):
        assert (two_site / ours["image"]).read_bytes() == (oracle / theirs["image"]).read_bytes()
    assert [e["image"] for e in oracle_meta["test"]] == [e["image"] for e in meta["test"]]
    assert all(Path(e["image"]).name.startswith("b_") for e in oracle_meta["training"])

    lists = load_datalist(two_site, num_labelled=2, num_val=1, num_classes=3, require_unlabelled=True)
    assert [Path(i["image"]).name for i in lists["labelled"]] == ["a_case_000.nii.gz", "a_case_001.nii.gz"]
    assert [Path(i["image"]).name for i in lists["validation"]] == ["a_case_002.nii.gz"]
    assert {Path(i["image"]).name[:2] for i in lists["unlabelled"] + lists["test"]} == {"b_"}


def test_generation_is_deterministic_and_reused(two_site: Path, tmp_path: Path) -> None:
    again = tmp_path / "demo_two_site"
    make_scenario("two_site", again, num_labelled=2, num_val=1, num_unlabelled=3, num_oracle_val=1, num_test=2,
                  shape=(32, 32, 32))
    for name in ("imagesTr/a_case_001.nii.gz", "imagesUn/b_case_002.nii.gz", "labelsTs/b_test_001.nii.gz"):
        assert (again / name).read_bytes() == (two_site / name).read_bytes(), name
    stamp = (again / "dataset.json").stat().st_mtime_ns
    make_two_site_dataset(again, num_labelled=2, num_val=1, num_unlabelled=3, num_oracle_val=1, num_test=2,
                          shape=(32, 32, 32))
    assert (again / "dataset.json").stat().st_mtime_ns == stamp  # complete and the same parameters: kept
    with pytest.raises(ValueError, match="scenario must be one of default, two_site"):
        make_scenario("three_site", again)


@pytest.mark.slow
def test_scenario_trains_and_evaluates_through_monai_bundle_run(two_site: Path, tmp_path: Path) -> None:
    """Mean Teacher on the scenario as a user runs it: site-A labels, site-B unlabelled images, site-B test cases."""
    configs = [str(REPO / "bundles" / "mean_teacher" / "configs" / c) for c in ("train.json", "evaluate.json")]
    common = ["--dataset_dir", str(two_site), "--ckpt_dir", str(tmp_path / "models"), "--num_labelled", "2",
              "--num_val", "1", "--roi_size", "[32, 32, 32]", "--num_workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "monai.bundle", "run"]
    train = subprocess.run([*base, "training", "--config_file", configs[0], *common, "--max_iterations", "2",
                            "--iterations_per_epoch", "2", "--output_dir", str(tmp_path / "train")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    evaluate = subprocess.run([*base, "--config_file", str(configs), *common, "--output_dir", str(tmp_path / "eval")],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert evaluate.returncode == 0, evaluate.stdout[-2000:] + evaluate.stderr[-2000:]
    cases = sorted(p.name for p in (tmp_path / "eval").glob("*_metrics.json"))
    assert cases == ["b_test_000_metrics.json", "b_test_001_metrics.json"]
    metrics = json.loads((tmp_path / "eval" / "b_test_000_metrics.json").read_text())
    assert metrics["spacing_mm"][0] == pytest.approx(nib.load(str(two_site / "imagesTs" / "b_test_000.nii.gz"))
                                                     .header.get_zooms()[0])


@pytest.mark.parametrize(("protocol", "digest"), [("REFERENCE_PROTOCOL", "4e1228766ce5de1e"),
                                                  ("FULL_PROTOCOL", "ab4fd75d3b13a847")])
def test_the_default_scenario_renders_as_before_the_second_site(protocol: str, digest: str) -> None:
    """Adding site B's spacing and rim settings left the default demo's cases byte-identical (the digests were
    computed with the generator before them), so earlier results on data/demo stay valid."""
    import hashlib

    from semiseg.data import demo

    params = sample_case_params(np.random.default_rng(np.random.SeedSequence([0, 0, 3, 0])),
                                getattr(demo, protocol), (24, 24, 24))
    image, label = render_case(params)
    assert hashlib.sha256(image.tobytes() + label.tobytes()).hexdigest()[:16] == digest
