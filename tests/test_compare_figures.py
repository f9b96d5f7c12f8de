"""``scripts/compare_figures.py`` (``compare_methods.py --figures-from``): the committed figures exist, their JSON
holds the numbers of the docs/results.md and docs/benchmarks.md tables they are drawn from, and figures from
finished run folders (several combined, a control named) pair each seed with the supervised baseline's."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "figures"
sys.path.insert(0, str(REPO / "scripts"))
import compare_figures  # noqa: E402

RESULTS_MD = (REPO / "docs" / "results.md").read_text()
BENCHMARKS_MD = (REPO / "docs" / "benchmarks.md").read_text()

# label in results.json -> where docs/results.md gives its numbers: (section heading or None, row prefix, cell) for
# the Dice mean ± sd, the per-seed Dice rows (prefix with the seed, cell) and the paired differences row
_THREE = "organ, lesion"
_BINARY = "foreground (binary)"
TABLES: dict[tuple[str, str], dict] = {
    (_THREE, "supervised"): {"dice": (None, "| supervised | student | 3 |", 5), "seeds": "| supervised | {seed} |"},
    (_THREE, "mean_teacher"): {"dice": (None, "| mean_teacher | student | 3 |", 5),
                               "seeds": "| mean_teacher | {seed} |", "paired": (None, "| Mean Teacher, student |")},
    (_THREE, "mean_teacher+strong_views"): {
        "dice": (None, "| mean_teacher+strong_views | student | 3 |", 5),
        "seeds": "| mean_teacher+strong_views | {seed} |",
        "paired": (None, "| Mean Teacher + strong views, student |")},
    (_THREE, "entropy_min"): {"dice": (None, "| entropy_min | student | 3 |", 5),
                              "paired": (None, "| entropy minimisation |")},
    (_THREE, "ict"): {"dice": (None, "| ict | student | 3 |", 5), "paired": (None, "| ICT, student |")},
    (_THREE, "uamt"): {"dice": (None, "| uamt | student | 3 |", 5), "paired": (None, "| UA-MT, student | +")},
    (_THREE, "layer_ensembles"): {"dice": (None, "| layer_ensembles | ensemble |", 4),
                                  "paired_cell": (None, "| layer_ensembles | ensemble |", 5)},
    (_THREE, "adversarial"): {"dice": (None, "| adversarial (DAN) | student | 3 |", 5), "paired": (None, "| DAN | -")},
    (_THREE, "cps"): {"dice": (None, "| cps | student | 3 |", 5), "paired": (None, "| CPS, first student | +")},
    (_THREE, "supervised, Xavier init (CPS's control)"): {
        "dice_text": r"initialisation \(a control: the command below\) scores (\d+\.\d) ± (\d+\.\d)",
        "paired": (None, "| supervised with Xavier initialisation (control, below) |")},
    (_THREE, "ugpcl"): {"dice": (None, "| ugpcl | student (CNN decoder) | 3 |", 5),
                        "paired": (None, "| UGPCL minus supervised |")},
    (_THREE, "supervised@ugpcl (UGPCL's backbone)"): {
        "dice": (None, "| supervised on UGPCL's backbone (control) | student | 3 |", 5),
        "paired": ("## UGPCL", "| control minus supervised (the backbone) |")},
    (_THREE, "urpc"): {"dice": (None, "| urpc 0.1.1 | student | 3 |", 5),
                       "paired": (None, "| URPC minus supervised |")},
    (_THREE, "supervised@urpc (URPC's backbone)"): {
        "dice": (None, "| supervised on URPC's backbone (control) | student | 3 |", 5),
        "paired": ("## URPC", "| control minus supervised (the backbone) |")},
    (_BINARY, "supervised"): {"dice": ("## Bayesian", "| supervised | student |", 2)},
    (_BINARY, "mean_teacher"): {"dice": ("## Bayesian", "| mean_teacher | student |", 2),
                                "paired_cell": ("## Bayesian", "| mean_teacher | student |", 3)},
    (_BINARY, "bpl"): {"dice": ("## Bayesian", "| bpl | student |", 2),
                       "paired_cell": ("## Bayesian", "| bpl | student |", 3)},
}


def _cells(text: str, section: str | None, prefix: str) -> list[str]:
    """The cells of the one table row starting with ``prefix`` (after the heading ``section``, when given)."""
    if section is not None:
        text = text[text.index(section):]
        text = text[: text.find("\n## ", 1)] if "\n## " in text[1:] else text
    rows = [line for line in text.splitlines() if line.startswith(prefix)]
    assert len(rows) == 1, f"{prefix!r} (section {section!r}): {len(rows)} rows"
    return [cell.strip().strip("*").strip() for cell in rows[0].strip("|").split("|")]


def _number(cell: str) -> float:
    return float(cell.replace("**", "").replace("+", ""))


def _mean_sd(cell: str) -> tuple[float, float, list[float]]:
    """``"67.7 ± 1.8"`` or ``"83.1 ± 1.4 (82.3, 82.4, 84.7)"`` -> mean, sd and the seeds in brackets."""
    match = re.fullmatch(r"\**([+-]?\d+\.\d+) ± (\d+\.\d+)\**(?: \(([^)]*)\))?", cell.replace("**", ""))
    assert match, cell
    seeds = [float(v) for v in match.group(3).split(",")] if match.group(3) else []
    return _number(match.group(1)), float(match.group(2)), seeds


def _table_row(spec: dict) -> dict:
    """What docs/results.md says of one row: dice mean/sd/seeds, paired mean/sd/seeds (absent where it says none)."""
    found: dict = {"paired_seeds": []}
    if "dice" in spec:
        found["dice_mean"], found["dice_sd"], found["dice_seeds"] = _mean_sd(_cells(RESULTS_MD, *spec["dice"][:2])[
            spec["dice"][2]])
    else:
        match = re.search(spec["dice_text"], RESULTS_MD)
        assert match, spec["dice_text"]
        found["dice_mean"], found["dice_sd"], found["dice_seeds"] = float(match.group(1)), float(match.group(2)), []
    if "seeds" in spec:
        found["dice_seeds"] = [_number(_cells(RESULTS_MD, None, spec["seeds"].format(seed=s))[2]) for s in range(3)]
    if "paired" in spec:
        cells = _cells(RESULTS_MD, *spec["paired"])
        found["paired_seeds"] = [_number(c) for c in cells[1:4]]
        found["paired_mean"], found["paired_sd"], _ = _mean_sd(cells[4])
    elif "paired_cell" in spec:
        found["paired_mean"], found["paired_sd"], _ = _mean_sd(_cells(RESULTS_MD, *spec["paired_cell"][:2])[
            spec["paired_cell"][2]])
    return found


def _committed_results() -> dict:
    return json.loads((FIGURES / compare_figures.RESULTS_FILE).read_text())


def test_the_committed_results_are_the_numbers_of_the_results_tables() -> None:
    results = _committed_results()
    rows = {(task["task"], row["label"]): row for task in results["tasks"] for row in task["rows"]}
    assert set(rows) == set(TABLES)
    for key, spec in TABLES.items():
        row, table = rows[key], _table_row(spec)
        assert (row["dice"]["mean"], row["dice"]["sd"]) == (table["dice_mean"], table["dice_sd"]), key
        assert list(row["dice"]["seeds"].values()) == table["dice_seeds"], key
        assert list(row["dice"]["seeds"]) == [str(s) for s in range(len(table["dice_seeds"]))], key
        if "paired_mean" in table:
            assert (row["paired"]["mean"], row["paired"]["sd"]) == (table["paired_mean"], table["paired_sd"]), key
            assert list(row["paired"]["seeds"].values()) == table["paired_seeds"], key
        else:
            assert row["paired"] is None and row["kind"] == "baseline", key


def test_the_committed_cost_table_is_the_benchmark_table() -> None:
    cost = compare_figures.read_cost(FIGURES / compare_figures.COST_FILE)
    section = BENCHMARKS_MD[BENCHMARKS_MD.index("## Every bundle's iteration cost"):]
    for bundle, ratios in cost.items():
        cells = _cells(section[: section.index("\n## ", 1)], None, f"| {bundle} |")
        assert ratios == {"48": _number(cells[3]), "64": _number(cells[6])}, bundle
    assert set(cost) >= {row["cost_key"] for task in _committed_results()["tasks"] for row in task["rows"]
                         if row["cost_key"]}


def test_the_committed_figures_are_drawn_from_the_committed_results(tmp_path: Path) -> None:
    results = _committed_results()
    cost = compare_figures.read_cost(FIGURES / compare_figures.COST_FILE)
    compare_figures.write_figures(results, cost, tmp_path)
    for name in compare_figures.FIGURES:
        png = (FIGURES / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
        committed = json.loads((FIGURES / f"{name}.json").read_text())
        assert committed == json.loads((tmp_path / f"{name}.json").read_text()), f"docs/figures/{name}.json is stale"
        assert committed["figure"] == f"{name}.png" and committed["drawn_from"] == "results.json"
    # and every plotted number is the table's, or derived from two of its numbers
    dice = json.loads((FIGURES / "dice_per_seed.json").read_text())
    paired = {r["label"]: r for r in json.loads((FIGURES / "paired_differences.json").read_text())["rows"]}
    for panel in dice["panels"]:
        base = {p["seed"]: p["dice"] for p in panel["baseline"]["seeds"]}
        for row in panel["rows"]:
            table = _table_row(TABLES[(panel["task"], row["label"])])
            assert (row["mean"], row["sd"]) == (table["dice_mean"], table["dice_sd"])
            for point in row["points"]:
                if point["source"] == "given":
                    assert point["dice"] == table["dice_seeds"][point["seed"]], (row["label"], point)
                else:
                    assert point["dice"] == pytest.approx(base[point["seed"]] + table["paired_seeds"][point["seed"]])
            suffix = "" if panel is dice["panels"][0] else f" [{panel['task']}]"
            if row["kind"] == "baseline":
                assert row["label"] + suffix not in paired
                continue
            drawn = paired[row["label"] + suffix]
            assert (drawn["mean"], drawn["sd"]) == (table["paired_mean"], table["paired_sd"])
            for point in drawn["points"]:
                expected = (table["paired_seeds"][point["seed"]] if point["source"] == "given"
                            else table["dice_seeds"][point["seed"]] - base[point["seed"]])
                assert point["difference"] == pytest.approx(expected), (row["label"], point)
    gains = json.loads((FIGURES / "cost_vs_gain.json").read_text())
    labels = {p["label"] for p in gains["points"]} | {p["label"] for p in gains["not_plotted"]}
    assert labels == set(paired) | {"supervised"}
    assert [p["number"] for p in gains["points"]] == list(range(1, len(gains["points"]) + 1))
    uamt = next(p for p in gains["points"] if p["label"] == "uamt")
    assert uamt["cost"] == {"48": 2.71, "64": 3.68} and (uamt["gain_mean"], uamt["gain_sd"]) == (0.7, 0.6)
    assert gains["not_plotted"] == [{"label": "mean_teacher+strong_views", "why": "no cost measured"}]


def test_results_and_figures_are_linked_from_the_docs() -> None:
    readme = (REPO / "README.md").read_text()
    for name in compare_figures.FIGURES:
        assert f"figures/{name}.png" in RESULTS_MD, name
    assert "docs/figures/" in readme and "--figures-from docs/figures/results.json" in RESULTS_MD


# figures from finished compare_methods.py folders --------------------------------------------------------------------


def _run_folder(folder: Path, variant_dice: dict[str, list[float]], classes: tuple[str, ...] = ("organ", "lesion"),
                teacher: tuple[str, ...] = (), scenario: str = "default") -> Path:
    """A compare_methods.py --out folder's compare.json: ``{variant: [student Dice mean per seed]}``, with a
    teacher 0.01 above the student for the variants in ``teacher``."""
    runs = []
    for variant, values in variant_dice.items():
        for seed, value in enumerate(values):
            run = {"variant": variant, "seed": seed, "student": {"dice": {"mean": value}}}
            if variant in teacher:
                run["teacher"] = {"dice": {"mean": value + 0.01}}
            runs.append(run)
    folder.mkdir(parents=True)
    (folder / "compare.json").write_text(json.dumps({"classes": list(classes), "scenario": scenario, "runs": runs}))
    return folder


def test_results_from_several_folders_pair_each_seed_with_the_baseline(tmp_path: Path) -> None:
    first = _run_folder(tmp_path / "compare", {"supervised": [0.60, 0.70, 0.65], "mean_teacher": [0.62, 0.69, 0.70]},
                        teacher=("mean_teacher",))
    second = _run_folder(tmp_path / "compare_new", {"ict": [0.61, 0.75]})
    control = _run_folder(tmp_path / "backbone", {"supervised": [0.66, 0.72, 0.70]})
    binary = _run_folder(tmp_path / "binary", {"supervised": [0.80, 0.82], "bpl": [0.70, 0.85]},
                         classes=("foreground",))
    other_site = _run_folder(tmp_path / "two_site", {"supervised": [0.50], "mean_teacher": [0.56]},
                             scenario="two_site")
    results = compare_figures.results_from_runs(
        [(None, first), (None, second), ("supervised@urpc", control), (None, binary), (None, other_site)],
        roles=("student", "teacher"))
    three, two, site = results["tasks"]
    assert (three["task"], two["task"], site["task"]) == ("organ, lesion", "foreground", "organ, lesion (two_site)")
    # a scenario is paired with its own baseline
    assert site["rows"][1]["paired"]["seeds"] == pytest.approx({"0": 6.0}) and site["scenario"] == "two_site"
    rows = {r["label"]: r for r in three["rows"]}
    assert list(rows) == ["supervised", "mean_teacher", "mean_teacher (teacher)", "ict", "supervised@urpc"]
    assert rows["supervised"]["kind"] == "baseline" and rows["supervised"]["paired"] is None
    assert rows["mean_teacher"]["dice"]["seeds"] == pytest.approx({"0": 62.0, "1": 69.0, "2": 70.0})
    assert rows["mean_teacher"]["paired"]["seeds"] == pytest.approx({"0": 2.0, "1": -1.0, "2": 5.0})
    assert rows["mean_teacher"]["paired"]["mean"] == pytest.approx(2.0)
    assert rows["mean_teacher"]["paired"]["sd"] == pytest.approx(3.0)  # stdev of 2, -1, 5
    assert rows["mean_teacher (teacher)"]["paired"]["seeds"] == pytest.approx({"0": 3.0, "1": 0.0, "2": 6.0})
    assert rows["ict"]["paired"]["seeds"] == pytest.approx({"0": 1.0, "1": 5.0})  # only the seeds it ran
    assert (rows["supervised@urpc"]["kind"], rows["supervised@urpc"]["cost_key"]) == ("control", "supervised@urpc")
    assert rows["ict"]["cost_key"] == "ict" and rows["mean_teacher"]["kind"] == "method"
    assert {r["label"]: r["paired"] and r["paired"]["mean"] for r in two["rows"]} == pytest.approx(
        {"supervised": None, "bpl": -3.5})  # (70 - 80 + 85 - 82) / 2

    cost = {"supervised": {"48": 1.0}, "mean_teacher": {"48": 1.1}, "supervised@urpc": {"48": 5.6}}
    written = compare_figures.write_figures(results, cost, tmp_path / "figures")
    assert [p.name for p in written] == [f"{n}.png" for n in compare_figures.FIGURES]
    gains = json.loads((tmp_path / "figures" / "cost_vs_gain.json").read_text())
    assert [(p["label"], p["cost"]) for p in gains["points"]] == [
        ("supervised", {"48": 1.0}), ("mean_teacher", {"48": 1.1}), ("mean_teacher (teacher)", {"48": 1.1}),
        ("supervised@urpc", {"48": 5.6}), ("mean_teacher [organ, lesion (two_site)]", {"48": 1.1})]
    assert {p["label"]: p["why"] for p in gains["not_plotted"]} == {
        "ict": "'ict' is not in the cost table", "bpl [foreground]": "'bpl' is not in the cost table"}
    dice = json.loads((tmp_path / "figures" / "dice_per_seed.json").read_text())
    assert all(p["source"] == "given" for panel in dice["panels"] for r in panel["rows"] for p in r["points"])


def test_a_seed_in_two_folders_or_a_labelled_folder_of_several_variants_is_refused(tmp_path: Path) -> None:
    first = _run_folder(tmp_path / "a", {"supervised": [0.6], "mean_teacher": [0.62]})
    second = _run_folder(tmp_path / "b", {"supervised": [0.66]})
    with pytest.raises(ValueError, match=r"supervised seed 0 \(organ, lesion\) is in both .*a and .*b: name one"):
        compare_figures.results_from_runs([(None, first), (None, second)])
    with pytest.raises(ValueError, match="a labelled folder must hold one variant"):
        compare_figures.results_from_runs([("x", first)])
    with pytest.raises(FileNotFoundError, match="compare.json not found"):
        compare_figures.results_from_runs([(None, tmp_path)])


def test_the_command_line_draws_from_folders_and_redraws_from_a_results_file(tmp_path: Path) -> None:
    first = _run_folder(tmp_path / "compare", {"supervised": [0.60, 0.70], "mean_teacher": [0.62, 0.69]})
    control = _run_folder(tmp_path / "backbone", {"supervised": [0.66, 0.72]})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "shared"))
    script = str(REPO / "scripts" / "compare_methods.py")
    result = subprocess.run([sys.executable, script, "--figures-from", str(first), f"supervised@ugpcl={control}"],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = first / "figures"
    assert result.stdout.split() == [str(out / f"{n}.png") for n in compare_figures.FIGURES]
    results = json.loads((out / "results.json").read_text())
    assert results["source"].startswith("python scripts/compare_methods.py --figures-from")
    assert [r["label"] for r in results["tasks"][0]["rows"]] == ["supervised", "mean_teacher", "supervised@ugpcl"]
    gains = json.loads((out / "cost_vs_gain.json").read_text())  # the committed CPU table's ratios
    assert {p["label"]: p["cost"]["64"] for p in gains["points"]} == {
        "supervised": 1.0, "mean_teacher": 1.08, "supervised@ugpcl": 5.67}

    (out / "dice_per_seed.json").unlink()
    again = subprocess.run([sys.executable, script, "--figures-from", str(out / "results.json")],
                           capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "dice_per_seed.json").read_text())["drawn_from"] == "results.json"
    bad = subprocess.run([sys.executable, script, "--figures-from", str(tmp_path / "nowhere")],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert bad.returncode == 2 and "nowhere: no such folder" in bad.stderr
