"""The run record in checkpoint.pt: what a resume compares, and what it refuses (issue 33 items 8 and 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from semiseg.bundle_config import SETTINGS, build_bundle
from semiseg.checkpoint_files import CheckpointFileError
from semiseg.errors import SettingError
from semiseg.handlers import MAY_CHANGE, RunRecord, check_resume
from tests.bundles.conftest import BUNDLES, REPO, config

SETTINGS_OF_RUN = {"learning_rate": 0.01, "roi_size": [32, 32, 32], "binarise_label": False, "consistency": 0.1}


def _checkpoint(tmp_path: Path, record: RunRecord, net: torch.nn.Module, iteration: int = 4) -> Path:
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "trainer": {"iteration": iteration}, "run_record": record.state_dict()},
               path)
    return path


def test_the_record_round_trips_through_a_weights_only_load(tmp_path: Path) -> None:
    record = RunRecord("mean_teacher", {**SETTINGS_OF_RUN, "roi_size": (32, 32, 32)})
    path = _checkpoint(tmp_path, record, torch.nn.Linear(2, 2))
    saved = torch.load(path, weights_only=True)["run_record"]
    assert saved == {"bundle": "mean_teacher", "settings": SETTINGS_OF_RUN}
    RunRecord("mean_teacher", SETTINGS_OF_RUN).load_state_dict(saved)  # the same settings: nothing to refuse


def test_a_setting_read_the_same_way_is_the_same() -> None:
    saved = RunRecord("b", SETTINGS_OF_RUN).state_dict()
    same = {**SETTINGS_OF_RUN, "binarise_label": "false", "learning_rate": 1e-2, "roi_size": [32, 32, 32]}
    assert RunRecord("b", same).differences(saved) == []


def test_every_setting_that_differs_is_named_with_the_value_to_pass() -> None:
    saved = RunRecord("b", SETTINGS_OF_RUN).state_dict()
    problems = RunRecord("b", {**SETTINGS_OF_RUN, "learning_rate": 0.5, "roi_size": [48, 48, 48]}).differences(saved)
    assert len(problems) == 2
    assert "was trained with learning_rate=0.01, this run sets 0.5" in problems[0]
    assert "pass --learning_rate 0.01 to continue" in problems[0]
    assert 'pass --roi_size "[32, 32, 32]" to continue' in problems[1]
    with pytest.raises(SettingError, match="learning_rate"):
        RunRecord("b", {**SETTINGS_OF_RUN, "learning_rate": 0.5}).load_state_dict(saved)


def test_a_setting_only_one_side_has_is_not_refused() -> None:
    saved = RunRecord("b", SETTINGS_OF_RUN).state_dict()
    assert RunRecord("b", {**SETTINGS_OF_RUN, "rot90": False}).differences(saved) == []


def test_check_resume_refuses_what_the_restored_state_cannot_honour(tmp_path: Path) -> None:
    net = torch.nn.Linear(2, 2)
    record = RunRecord("mean_teacher", SETTINGS_OF_RUN)
    path = _checkpoint(tmp_path, record, net)
    assert check_resume(path, record, net, max_iterations=4) is True  # the saved budget reached: allowed
    assert check_resume(path, record, net, max_iterations=6000) is True
    with pytest.raises(SettingError, match=r"is at iteration 4, beyond --max_iterations 3: pass --max_iterations 4"):
        check_resume(path, record, net, max_iterations=3)
    with pytest.raises(SettingError, match="written by the 'mean_teacher' bundle, not 'supervised'"):
        check_resume(path, RunRecord("supervised", SETTINGS_OF_RUN), net, max_iterations=10)
    with pytest.raises(SettingError, match="consistency=0.1, this run sets 1.0"):
        check_resume(path, RunRecord("mean_teacher", {**SETTINGS_OF_RUN, "consistency": 1.0}), net, 10)
    with pytest.raises(SettingError, match=r"model weights in \S+ do not fit this bundle's network"):
        check_resume(path, record, torch.nn.Linear(2, 3), max_iterations=10)


@pytest.mark.parametrize(("state", "message"), [
    ({"model": {}}, "is not a training checkpoint"),
    ({"model": {}, "trainer": {"iteration": 2}}, "has no record of the bundle and settings it was trained with"),
])
def test_check_resume_refuses_a_checkpoint_it_cannot_check(tmp_path: Path, state: dict, message: str) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointFileError, match=message):
        check_resume(path, RunRecord("b", SETTINGS_OF_RUN), torch.nn.Linear(2, 2), max_iterations=10)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_top_level_setting_is_recorded_or_may_change(bundle: str) -> None:
    """``make configs`` lists the settings, so one an overlay (or the template) adds later is recorded unasked."""
    train = json.loads(Path(config(bundle, "train.json")).read_text())
    recorded = set(train["run_record"]["settings"])
    literal = {k for k, v in train.items()
               if not k.startswith("_") and k not in ("imports", "initialize", "run", "training")
               and not isinstance(v, dict) and not (isinstance(v, str) and v[:1] in "$@%")
               and not (isinstance(v, list) and any(isinstance(i, str) and i[:1] in "$@" for i in v))}
    assert recorded == literal - set(train["run_record"]["may_change"])
    assert set(train["run_record"]["may_change"]) == set(MAY_CHANGE)
    assert train["checkpoint"]["objects"]["run_record"] == "@run_record"
    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    assert parser.get_parsed_content("run_record").state_dict()["bundle"] == bundle


def test_the_generator_fills_the_settings_of_the_overlay_too() -> None:
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    overlay["train"]["new_weight"] = 0.5
    overlay["train"]["new_switch"] = True
    overlay["train"]["+run_record#may_change"] = ["consistency"]
    train = build_bundle("mean_teacher", overlay)["train.json"]
    settings = train["run_record"]["settings"]
    assert settings["new_weight"] == "@new_weight" and settings["ema_decay"] == "@ema_decay"
    assert settings["new_switch"] == "$semiseg.settings.flag(@new_switch, 'new_switch')"
    assert "consistency" not in settings and "max_iterations" not in settings and SETTINGS not in json.dumps(train)
