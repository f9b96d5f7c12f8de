"""Uncertainty-driven active learning (semiseg.active_learning): known ranking, one pass per image, cache keys."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SimpleInferer
from monai.transforms import EnsureChannelFirst, LoadImage

from semiseg.active_learning import (
    UncertaintyCache,
    UncertaintyRanker,
    bundle_predictor,
    image_key,
    uncertainty_score,
)
from semiseg.inference import predict_with_uncertainty

REPO = Path(__file__).resolve().parents[1]


class FirstClassLogit(torch.nn.Module):
    """Logits ``(x, 0, 0)`` per voxel: the larger the intensity, the surer the model is of class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.zeros_like(x), torch.zeros_like(x)], dim=1)


def _write(path: Path, value: float, shape: tuple[int, int, int] = (6, 5, 4)) -> str:
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), path)
    return str(path)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, str]:
    # names sort opposite to the expected ranking, so a ranking by name would fail
    return {"a_sure": _write(tmp_path / "a_sure.nii.gz", 4.0), "b_middle": _write(tmp_path / "b_middle.nii.gz", 1.0),
            "c_unsure": _write(tmp_path / "c_unsure.nii.gz", 0.0)}


def _predictor(calls: list[str]):
    load = LoadImage(image_only=True)
    channel_first = EnsureChannelFirst()
    network = FirstClassLogit()

    def predict(path: str) -> dict[str, torch.Tensor]:
        calls.append(path)
        image = channel_first(load(path))[None]
        return predict_with_uncertainty(network, image.as_tensor(), SimpleInferer())

    return predict


def test_most_uncertain_image_is_ranked_first_with_hand_computed_scores(images: dict[str, str]) -> None:
    calls: list[str] = []
    ranking = UncertaintyRanker(_predictor(calls)).rank(images.values())
    assert [Path(p).name for p, _ in ranking] == ["c_unsure.nii.gz", "b_middle.nii.gz", "a_sure.nii.gz"]
    # normalised entropy of softmax(v, 0, 0), eps 1e-6 inside the log, divided by ln 3 (docs/architecture.md §3):
    # v = 0: p = (1/3, 1/3, 1/3): H = ln 3 -> 1.0
    # v = 1: p0 = e / (e + 2) = 2.71828 / 4.71828 = 0.57612, p1 = p2 = 1 / 4.71828 = 0.21194;
    #        H = 0.57612 * 0.55145 + 2 * 0.21194 * 1.55144 = 0.31770 + 0.65762 = 0.97532; / 1.09861 = 0.88777
    # v = 4: p0 = 54.598 / 56.598 = 0.96466, p1 = p2 = 0.01767;
    #        H = 0.96466 * 0.03598 + 2 * 0.01767 * 4.03576 = 0.03471 + 0.14263 = 0.17734; / 1.09861 = 0.16142
    scores = dict(ranking)
    assert scores[images["c_unsure"]] == pytest.approx(1.0, abs=1e-5)
    assert scores[images["b_middle"]] == pytest.approx(0.88777, abs=1e-4)
    assert scores[images["a_sure"]] == pytest.approx(0.16142, abs=1e-4)
    assert len(calls) == 3


def test_one_pass_per_image_and_checkpoint_then_the_cache(images: dict[str, str], tmp_path: Path) -> None:
    calls: list[str] = []
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights v1")
    cache_file = tmp_path / "cache" / "uncertainty.json"
    ranker = UncertaintyRanker(_predictor(calls), checkpoint=ckpt, cache=UncertaintyCache(cache_file))
    first = ranker.rank(images.values())
    assert len(calls) == 3 and cache_file.is_file()
    # a new server process reads the file: no pass at all
    again = UncertaintyRanker(_predictor(calls), checkpoint=ckpt, cache=UncertaintyCache(cache_file))
    assert again.rank(images.values()) == first and len(calls) == 3 and again.passes == 0
    # a rewritten image is rescored alone
    _write(Path(images["a_sure"]), 0.0, shape=(6, 5, 3))
    assert again.rank(images.values())[0][1] == pytest.approx(1.0, abs=1e-5) and calls[3:] == [images["a_sure"]]
    # new weights: everything is rescored
    ckpt.write_bytes(b"weights v2")
    UncertaintyRanker(_predictor(calls), checkpoint=ckpt, cache=UncertaintyCache(cache_file)).rank(images.values())
    assert len(calls) == 4 + 3


def test_aula_measure_and_custom_measures() -> None:
    # AULA 0.25 (heads disagree) -> uncertainty 0.75; AULA 1 -> 0
    assert uncertainty_score({"aula": torch.tensor([0.25])}, "aula") == pytest.approx(0.75)
    assert uncertainty_score({"aula": torch.tensor(1.0)}, "aula") == 0.0
    ranking = UncertaintyRanker(lambda p: {"aula": torch.tensor([0.9 if "sure" in p else 0.2])}, measure="aula")
    assert ranking.measure_name == "aula"

    def variance(output: dict) -> float:
        return float(output["variance"].mean())

    assert uncertainty_score({"variance": torch.tensor([0.5, 1.5])}, variance) == 1.0


def test_bad_measures_and_outputs_name_the_problem(images: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="unknown uncertainty measure 'mutual'"):
        UncertaintyRanker(lambda p: {}, measure="mutual")
    with pytest.raises(ValueError, match=r"reads 'aula'.*keys: \['entropy'\]"):
        uncertainty_score({"entropy": torch.zeros(1)}, "aula")
    with pytest.raises(ValueError, match="no images to rank"):
        UncertaintyRanker(lambda p: {}).rank([])
    with pytest.raises(FileNotFoundError):
        image_key(Path(images["a_sure"]).with_name("missing.nii.gz"))


def test_bundle_predictor_runs_the_bundles_own_inference_pipeline(tmp_path: Path) -> None:
    """mean_teacher's inference.json (pre-processing, sliding window, softmax, entropy, inversion), random weights."""
    bundle = tmp_path / "mean_teacher"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    for name in ("inference.json", "metadata.json"):
        (bundle / "configs" / name).write_text((REPO / "bundles" / "mean_teacher" / "configs" / name).read_text())
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    rng = np.random.default_rng(0)
    image = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 18, 16)).astype(np.float32), np.eye(4)), image)
    with pytest.raises(FileNotFoundError, match="no weights at"):
        bundle_predictor(bundle, model_file=tmp_path / "nothing.pt")
    predict, weights = bundle_predictor(bundle)
    assert weights == bundle / "models" / "model.pt"
    output = predict(str(image))
    assert tuple(output["entropy"].shape) == (1, 20, 18, 16)
    score = uncertainty_score(output)
    assert 0.0 < score <= 1.0 and math.isfinite(score)
    assert not list(tmp_path.glob("**/*_entropy.nii.gz"))  # the saving transforms were left out
