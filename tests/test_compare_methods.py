"""``scripts/compare_methods.py``, the results protocol's driver: a run is trained and evaluated as a user runs the
bundle, its metrics are tabulated, ``--resume`` reuses finished runs (and makes the evaluations they lack),
``--binary`` evaluates one foreground class, CPS is evaluated as each student and as their mean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "compare_methods.py"


def _compare(tiny_demo: Path, out: Path, *extra: str, variant: str = "supervised") -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), "--variants", variant, "--seeds", "0", "--iterations", "2",
           "--parallel", "1", "--data", str(tiny_demo), "--out", str(out),
           "--set", "num_val=1", "roi_size=[32,32,32]", "iterations_per_epoch=2", "val_interval=1", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_binary_run_is_tabulated_then_reused(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    before = (tiny_demo / "dataset.json").read_text()
    first = _compare(tiny_demo, out, "--binary")
    run = json.loads((out / "supervised_seed0" / "run.json").read_text())
    assert set(run["student"]["dice"]) == {"foreground", "mean"}
    assert run["train_s"] > 0
    table = (out / "results.md").read_text()
    assert "| variant | weights | seeds | Dice foreground | Dice mean |" in table, table
    assert "reused" not in first.stdout

    second = _compare(tiny_demo, out, "--binary", "--resume")
    assert "supervised                   seed=0: finished before, reused" in second.stdout
    summary = json.loads((out / "compare.json").read_text())
    assert summary["runs"] == [run] and summary["classes"] == ["foreground"]
    assert (tiny_demo / "dataset.json").read_text() == before  # a --data folder is read, never regenerated


def test_cps_students_and_their_mean_are_evaluated_and_a_missing_evaluation_is_made_on_resume(
        tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    _compare(tiny_demo, out, variant="cps")
    run_file = out / "cps_seed0" / "run.json"
    run = json.loads(run_file.read_text())
    assert {"student", "student_2", "students_mean"} <= set(run) and "teacher" not in run
    table = (out / "results.md").read_text()
    assert "| cps | students_mean | 1 |" in table, table
    assert "| variant | seed | student Dice mean | student_2 Dice mean | students_mean Dice mean |" in table, table

    del run["students_mean"]  # as a run finished before the role existed
    run_file.write_text(json.dumps(run))
    _compare(tiny_demo, out, "--resume", variant="cps")
    assert "students_mean" in json.loads(run_file.read_text())
    assert (out / "cps_seed0" / "evaluate_students_mean.log").is_file()


def test_run_records_its_settings_and_resume_refuses_other_settings(tiny_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    _compare(tiny_demo, out, "--eval-set", "overlap=0.5", "blend_mode=constant")
    run = json.loads((out / "supervised_seed0" / "run.json").read_text())
    assert run["settings"]["roi_size"] == [32, 32, 32] and run["settings"]["intensity_norm"] == "zscore"
    assert run["settings"]["network_def"]["_target_"] == "UNet"
    assert run["overrides"]["roi_size"] == "[32,32,32]" and run["commit"]
    assert "student[overlap=0.5,blend_mode=constant]" in run
    assert (out / "supervised_seed0" / "eval_student_overlap_0.5_blend_mode_constant" / "dice_raw.csv").is_file()

    cmd = [sys.executable, str(SCRIPT), "--variants", "supervised", "--seeds", "0", "--iterations", "2",
           "--parallel", "1", "--data", str(tiny_demo), "--out", str(out), "--resume",
           "--set", "num_val=1", "roi_size=[32,32,32]", "iterations_per_epoch=2", "val_interval=1",
           "intensity_norm=percentile"]
    refused = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert refused.returncode != 0
    assert "other settings" in refused.stderr and "intensity_norm: 'zscore' then, 'percentile' now" in refused.stderr
    assert json.loads((out / "supervised_seed0" / "run.json").read_text()) == run  # nothing reused or replaced


def test_the_scenario_names_every_run_folder_but_the_default_one(tmp_path: Path) -> None:
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(out=tmp_path, scenario="two_site")
    assert module.run_dir("mean_teacher", 2, args) == tmp_path / "mean_teacher_two_site_seed2"
    args.scenario = "default"
    assert module.run_dir("mean_teacher", 2, args) == tmp_path / "mean_teacher_seed2"
    assert module.SCENARIO_DATA["two_site"] == REPO / "data" / "demo_two_site"


def test_qc_correlations_per_class_are_read_and_tabulated(tmp_path: Path) -> None:
    import importlib.util

    from semiseg.reporting_qc import write_qc_report

    spec = importlib.util.spec_from_file_location("compare_methods", SCRIPT)
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    # organ AULA and Dice in the same order (rho 1), lesion in the opposite order (rho -1), the case values rho 1
    rows = [{"case": c, "image": c, "aula": a, "dice": d, "hd95": 1.0, "mean_entropy": 0.1,
             "aula_per_class": [a, 1 - a], "dice_per_class": [d, d]} for c, a, d in (("a", 0.9, 0.8), ("b", 0.5, 0.3),
                                                                                   ("c", 0.7, 0.6))]
    write_qc_report(rows, tmp_path, class_names=["organ", "lesion"])
    qc = compare.qc_spearman(tmp_path / "qc_report.csv", ("organ", "lesion"))
    assert qc["qc_spearman"] == 1.0 and qc["qc_spearman_per_class"] == {"organ": 1.0, "lesion": -1.0}
    metrics = {"dice": {"organ": 0.8, "lesion": 0.5, "mean": 0.65}, "hd95": {"mean": 1.0}, "asd": {"mean": 1.0}, **qc}
    text = compare.table([{"variant": "layer_ensembles", "seed": 0, "train_s": 1.0, "student": metrics}],
                         ["layer_ensembles"])
    assert "| Spearman(AULA organ, Dice organ) | Spearman(AULA lesion, Dice lesion) |" in text, text
    assert "| layer_ensembles | student | 0: 1.00 | 1.00 ± 0.00 | 1.00 ± 0.00 | -1.00 ± 0.00 |" in text, text
