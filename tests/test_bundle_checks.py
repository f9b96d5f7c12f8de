"""semiseg.bundle_checks: misspelt overrides and out-of-range settings fail before a bundle run does any work.

The command-line path (``python -m monai.bundle run ... --max_iteration 4``) is exercised per bundle by
``tests/test_bad_inputs.py``; these tests cover the parsing and the checks themselves.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from semiseg.bundle_checks import (
    SETTING_RULES,
    check_overrides,
    check_run,
    check_settings,
    cli_run_args,
    parse_run_args,
)
from semiseg.errors import SettingError
from tests.bundles.conftest import BUNDLES, REPO, config

TRAIN = config("mean_teacher", "train.json")
TEMPLATE = REPO / "templates" / "bundle" / "configs"


# ------------------------------------------------------------------------------------------------ argv parsing


def test_parse_run_args_reads_keys_the_way_fire_does() -> None:
    args = parse_run_args([
        "training", "--config_file", "['a.json', 'b.json']", "--max-iterations", "-5", "--resume", "--x=1",
        "--network_def#dropout", "0.1", "--meta_file", "m.json", "--flag", "--", "--help",
    ])
    assert args.config_file == ["a.json", "b.json"]
    assert args.overrides == {
        "max_iterations": "-5", "resume": "True", "x": "1", "network_def#dropout": "0.1", "flag": "True",
    }  # run's own arguments (meta_file) are not overrides; "-5" is a value; "--" ends the arguments
    assert parse_run_args(["--config_file", "a.json,b.json"]).config_file == "a.json,b.json"


def test_cli_run_args_only_for_monai_bundle_run(tmp_path: Path) -> None:
    assert cli_run_args() is None  # pytest is not `python -m monai.bundle`
    assert cli_run_args(["x", "verify_metadata", "--meta_file", "m.json"]) is None
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": TRAIN, "run_id": "training", "max_iteration": 3, "seed": 1}))
    parsed = cli_run_args(["x", "run", "--args_file", str(args_file), "--seed", "2"])
    assert parsed is not None and parsed.config_file == TRAIN
    assert parsed.overrides == {"max_iteration": 3, "seed": "2"}  # the command line wins over the args file


# ---------------------------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize(
    "key",
    ["max_iterations", "roi_size", "train#trainer#max_epochs", "network_def#dropout", "train#handlers#1#interval",
     "+train#handlers", "checkpoint#objects#extra", "_meta_#version", "train::trainer::max_epochs"],
)
def test_known_ids_and_valid_new_nested_keys_pass(key: str) -> None:
    check_overrides(TRAIN, [key])


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("max_iteration", r"unknown setting --max_iteration: \S+train\.json has no id 'max_iteration'; "
                          r"did you mean --max_iterations\?"),
        ("num_labeled", r"did you mean --num_labelled\b"),
        ("zzzzqq", r"has no id 'zzzzqq'; its settings are bundle_root, ckpt_dir"),
        ("train#trainr#max_epochs", r"its parent 'train#trainr' is not an id of \S+; did you mean train#trainer\?"),
        ("train#trainer#max_epoch", r"'train#trainer' builds semiseg\.engines\.SemiSupervisedTrainer, which takes no "
                                    r"argument 'max_epoch'; did you mean --train#trainer#max_epochs\?"),
        ("network_def#dropuot", r"'network_def' builds UNet, which takes no argument 'dropuot'; "
                                r"did you mean --network_def#dropout\?"),
        ("train#handlers#99", r"'train#handlers' is a list of \d+ items .* must be an index 0\.\.\d+"),
        ("num_classes#x", r"'num_classes' is a value \(3\) .*, not a dict to add 'x' to"),
    ],
    ids=["typo", "typo-2", "no-close-id", "missing-parent", "component-argument", "network-argument", "list-index",
         "scalar-parent"],
)
def test_unknown_ids_fail_naming_the_id_and_the_closest_known(key: str, message: str) -> None:
    with pytest.raises(SettingError, match=message) as info:
        check_overrides(TRAIN, [key])
    assert info.value.problems[0].endswith("Fix the name (nothing was run).")


def test_experiment_tracking_ids_are_known_with_tracking_only() -> None:
    check_overrides(TRAIN, ["experiment_name", "tracking_uri"], tracking="mlflow")
    with pytest.raises(SettingError, match="unknown setting --experiment_name"):
        check_overrides(TRAIN, ["experiment_name"])
    assert parse_run_args(["--tracking", "mlflow", "--run_name", "x"]).tracking == "mlflow"


def test_every_unknown_id_is_listed_and_merged_configs_count() -> None:
    files = [TRAIN, config("mean_teacher", "evaluate.json")]
    check_overrides(files, {"max_iterations": 2, "dataset_dir": "x"})
    with pytest.raises(SettingError) as info:
        check_overrides(files, {"max_iteration": 2, "roi_sizes": "[32, 32, 32]", "seed": 1})
    assert [p.split(":")[0] for p in info.value.problems] == ["unknown setting --max_iteration",
                                                              "unknown setting --roi_sizes"]
    assert " + " in info.value.problems[0]  # both config files are named


@pytest.mark.parametrize("bundle", BUNDLES)
def test_the_standard_test_overrides_are_known_ids(bundle: str) -> None:
    from tests.bundles.conftest import bundle_overrides

    check_overrides(config(bundle, "train.json"), bundle_overrides(Path("d"), Path("o")))
    check_overrides(config(bundle, "inference.json"), ["dataset_dir", "ckpt_dir", "output_dir", "roi_size"])


# ----------------------------------------------------------------------------------------------------- settings


GOOD = {
    "max_iterations": 1, "iterations_per_epoch": 100, "num_val": 0, "num_labelled": None, "batch_size": 2,
    "num_workers": 0, "seed": 0, "num_classes": 2, "roi_size": [48, 48, 32], "learning_rate": 1e-4,
    "momentum": 0.0, "weight_decay": 0.0, "cache_rate": 1.0, "overlap": 0.0, "ema_decay": 1.0, "consistency": 0,
    "nonfinite_voxels": "replace", "sw_batch_size": 1, "in_channels": 1, "blend_mode": "constant",
    "intensity_norm": "zscore", "label_crop": "uniform", "rot90": "false",
}
BAD = [
    ("max_iterations", 0, "an integer >= 1"), ("max_iterations", -5, "an integer >= 1"),
    ("max_iterations", 2.0, "an integer >= 1"), ("max_iterations", "4", "an integer >= 1"),
    ("max_iterations", True, "an integer >= 1"), ("num_workers", -1, "an integer >= 0"),
    ("num_val", -1, "an integer >= 0"), ("num_classes", 1, "an integer >= 2"),
    ("num_labelled", 0, r"an integer >= 1 \(or null"), ("roi_size", [32, 32], "three integers >= 1"),
    ("roi_size", [32, 0, 32], "three integers >= 1"), ("learning_rate", 0.0, "a number > 0"),
    ("learning_rate", math.nan, "a number > 0"), ("momentum", 1.0, r"a number in \[0, 1\)"),
    ("weight_decay", -1e-4, "a number >= 0"), ("cache_rate", 1.5, r"a number in \[0, 1\]"),
    ("overlap", 1.0, r"a number in \[0, 1\)"), ("overlap", [0.5, 0.5], r"a number in \[0, 1\)"),
    ("nonfinite_voxels", "ignore", "'error' or 'replace'"), ("blend_mode", "mean", "'gaussian' or 'constant'"),
    ("intensity_norm", "minmax", "'percentile' or 'zscore' or 'none'"),
    ("label_crop", "posneg", "'balanced' or 'uniform'"), ("rot90", "maybe", "true or false"),
]


def test_per_axis_overlap_passes_and_rot90_needs_a_square_first_plane() -> None:
    check_settings(overlap=[0.839, 0.839, 0.95], rot90=True, roi_size=[112, 112, 80])
    message = r"setting rot90 .* roi_size\[0\] == roi_size\[1\], got roi_size \[48, 32, 48\]"
    with pytest.raises(SettingError, match=message):
        check_settings(rot90="true", roi_size=[48, 32, 48])
    check_settings(rot90="false", roi_size=[48, 32, 48])


def test_settings_in_range_pass() -> None:
    check_settings(**GOOD)
    assert set(GOOD) <= set(SETTING_RULES)


@pytest.mark.parametrize(("name", "value", "expected"), BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_settings_out_of_range_fail_with_the_setting_and_what_it_must_be(name: str, value: object,
                                                                         expected: str) -> None:
    with pytest.raises(SettingError, match=rf"^setting {name} must be {expected}.*, got {re.escape(repr(value))} "
                                           rf"\({type(value).__name__}\); set it with --{name} <value>"):
        check_settings(**{name: value})


def test_all_bad_settings_are_reported_together_and_unknown_names_are_a_config_mistake() -> None:
    with pytest.raises(SettingError) as info:
        check_settings(max_iterations=0, momentum=2.0, seed=0)
    assert len(info.value.problems) == 2
    with pytest.raises(ValueError, match=r"no rule for \['max_iteration'\]"):
        check_settings(max_iteration=4)


def test_check_run_checks_settings_in_process_and_ignores_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["x", "run", "--config_file", TRAIN, "--max_iteration", "4"])
    assert check_run(max_iterations=4) is True  # not `python -m monai.bundle`: argv is not a bundle command line
    with pytest.raises(SettingError, match="setting max_iterations"):
        check_run(max_iterations=0)


# ------------------------------------------------------------------------------------------- the configs' calls


def _initialize_settings(name: str) -> set[str]:
    first = json.loads((TEMPLATE / name).read_text())["initialize"][0]
    assert first.startswith("$semiseg.bundle_checks.check_run("), f"{name}: initialize#0 is not the check"
    return {key for key, ref in re.findall(r"(\w+)=@(\w+)", first) if key == ref}


@pytest.mark.parametrize(("name", "removed_by_overlays"), [("train.json", {"unlabelled_batch_size"}),
                                                           ("inference.json", set())])
def test_initialize_checks_every_template_tunable_that_has_a_rule(name: str, removed_by_overlays: set[str]) -> None:
    """A tunable added to the template with a rule in SETTING_RULES must be passed to check_run (the supervised
    overlay removes unlabelled_batch_size, so the template cannot refer to it)."""
    template = json.loads((TEMPLATE / name).read_text())
    assert {k for k in template if k in SETTING_RULES} - removed_by_overlays == _initialize_settings(name)


def test_cli_typo_fails_before_any_work(tmp_path: Path) -> None:
    """The command line path end to end: the check runs first in initialize, nothing is created."""
    ckpt = tmp_path / "models"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config("supervised", "train.json"),
           "--ckpt_dir", str(ckpt), "--dataset_dir", str(tmp_path / "none"), "--network_def#dropuot", "0.1"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1
    report = done.stderr[done.stderr.index("semiseg: error: "):]
    assert report.splitlines()[0].startswith(
        "semiseg: error: unknown setting --network_def#dropuot: 'network_def' builds UNet"
    )
    assert "Traceback" not in done.stderr and not ckpt.exists()
