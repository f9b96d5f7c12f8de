"""``--save_best true``: a training run also keeps ``models/model_best.pt``, the weights of its best validation score,
chosen on the validation cases; evaluate scores the test cases without touching it. Off by default."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, run

from semiseg.data import load_datalist
from semiseg.errors import SettingError
from tests.bundles.conftest import BUNDLES, config
from tests.bundles.conftest import bundle_overrides as _overrides

BUNDLE = "supervised"


def _dice(eval_dir: Path) -> float:
    with open(eval_dir / "dice_raw.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    values = [float(v) for k, v in rows[0].items() if k.startswith("class") and v not in ("", "nan")]
    return sum(values) / len(values)


def test_best_weights_are_chosen_on_the_validation_cases(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path)  # num_val 1: one validation case, held out of the training cases
    train, evaluate = config(BUNDLE, "train.json"), config(BUNDLE, "evaluate.json")
    # learning rate 5: the first validation scores best and the later ones worse, so the best weights are not the
    # final ones (checked below: otherwise the test could not tell them apart)
    run("training", config_file=train, max_iterations=4, iterations_per_epoch=1, val_interval=1, save_best=True,
        learning_rate=5.0, **common)
    models = tmp_path / "models"
    best, final = (torch.load(models / name, weights_only=True) for name in ("model_best.pt", "model.pt"))
    assert set(best) == set(final)  # a bare state dict, as model.pt
    assert any(not torch.equal(best[k], final[k]) for k in best), "the run's best validation was its last"
    state = torch.load(models / "checkpoint.pt", weights_only=True)["best_weights"]
    (best_score, _), = state["_saved"]  # the best validation score of the run, with its weights in model_best.pt

    # scored again on the validation case, model_best.pt gives that score; the final weights none higher
    datalist = load_datalist(tiny_demo, num_labelled=2, num_val=1)
    validation = json.dumps(datalist["validation"])
    for name in ("model_best.pt", "model.pt"):
        run(config_file=[train, evaluate], **{**common, "output_dir": str(tmp_path / name)},
            model_file=str(models / name), **{"validate#dataset#data": f"${validation}"})
    assert _dice(tmp_path / "model_best.pt") == pytest.approx(best_score, abs=1e-4)
    assert _dice(tmp_path / "model.pt") < best_score

    # evaluating on the test cases, even with --save_best true, leaves model_best.pt as it is
    before = (models / "model_best.pt").read_bytes()
    run(config_file=[train, evaluate], **common, save_best=True)
    assert (tmp_path / "eval" / "dice_raw.csv").is_file()
    assert (models / "model_best.pt").read_bytes() == before


def test_off_by_default_and_refused_without_validation_cases(tiny_demo: Path, tmp_path: Path) -> None:
    common = _overrides(tiny_demo, tmp_path)
    run("training", config_file=config(BUNDLE, "train.json"), max_iterations=1, iterations_per_epoch=1, **common)
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "models" / "model_best.pt").exists()
    with pytest.raises(Exception) as info:
        run("training", config_file=config(BUNDLE, "train.json"), max_iterations=1, iterations_per_epoch=1,
            **{**common, "num_val": 0, "ckpt_dir": str(tmp_path / "other")}, save_best=True)
    chain = [info.value, *(e for e in (info.value.__cause__, info.value.__context__) if e is not None)]
    assert any(isinstance(e, SettingError) and "--num_val" in str(e) for e in chain)
    assert not (tmp_path / "other").exists()  # refused before the checkpoint folder was made


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_bundle_has_the_option_and_evaluate_never_attaches_it(bundle: str) -> None:
    train = ConfigParser()
    train.read_config(config(bundle, "train.json"))
    assert train["save_best"] is False
    assert "@validate#best_saver" in train["validate#handlers"]
    assert train["validate#best_saver#enabled"] == "$semiseg.settings.flag(@save_best, 'save_best')"
    assert train["validate#best_saver#filename"] == "model_best.pt"
    assert train["checkpoint#objects#best_weights"] == "@validate#best_saver"
    evaluate = ConfigParser()
    evaluate.read_config([config(bundle, "train.json"), config(bundle, "evaluate.json")])
    assert evaluate["validate#dataset#data"] == "$@datalist['test']"
    assert not any("best_saver" in json.dumps(h) or "BestWeightsSaver" in json.dumps(h)
                   for h in evaluate["validate#handlers"])
