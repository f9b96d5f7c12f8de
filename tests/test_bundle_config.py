"""The bundle config generator: committed configs equal template + overlay, and the overlay rules hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from semiseg.bundle_config import (
    CONFIGS,
    GENERATED_KEY,
    OPTIONAL_CONFIGS,
    BundleConfigError,
    apply_overlay,
    build_bundle,
    bundle_dirs,
    check_bundles,
    dumps,
    main,
    write_bundle,
)

REPO = Path(__file__).resolve().parents[1]


def test_committed_bundle_files_equal_template_plus_overlay() -> None:
    """Fails when someone edits a generated config by hand, or the template without `make configs`."""
    dirs = bundle_dirs()
    assert {d.name for d in dirs} >= {"supervised", "mean_teacher"}
    problems = check_bundles(dirs)
    assert not problems, "generated bundle files drifted; run `make configs`:\n" + "\n".join(problems)


def test_every_bundle_folder_has_an_overlay() -> None:
    with_configs = {p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/train.json")}
    assert with_configs == {d.name for d in bundle_dirs()}


@pytest.mark.parametrize("bundle", [d.name for d in bundle_dirs()])
def test_generated_files_are_marked_and_complete(bundle: str) -> None:
    for name in CONFIGS:
        config = json.loads((REPO / "bundles" / bundle / "configs" / name).read_text())
        assert "make configs" in config[GENERATED_KEY] and f"bundles/{bundle}/overlay.json" in config[GENERATED_KEY]
        assert "<overlay>" not in json.dumps(config) and "<train.json>" not in json.dumps(config)
        assert "__BUNDLE__" not in json.dumps(config)
    train = ConfigParser()
    train.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    assert train["bundle_root"] == f"$'bundles/{bundle}' if os.path.isdir('bundles/{bundle}') else '.'"


@pytest.mark.parametrize("bundle", [d.name for d in bundle_dirs()])
def test_network_def_is_written_once_and_inference_gets_it(bundle: str) -> None:
    train = json.loads((REPO / "bundles" / bundle / "configs" / "train.json").read_text())
    inference = json.loads((REPO / "bundles" / bundle / "configs" / "inference.json").read_text())
    for key in ("network_def", "num_classes", "in_channels", "roi_size"):
        assert inference[key] == train[key], key
    overlay = json.loads((REPO / "bundles" / bundle / "overlay.json").read_text())
    assert "network_def" not in overlay.get("inference", {})


def test_mean_teacher_overlay_is_short() -> None:
    assert len((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text().splitlines()) < 80


def test_overlay_rules() -> None:
    base = {"a": 1, "network_def": {"x": 1}, "train": {"handlers": [1, 2], "objects": {"m": "@m"}}, "run": []}
    out = apply_overlay(base, {
        "a": 2,                                # replace a top-level id in place
        "tunable": 5,                          # new tunable: before network_def
        "component": {"_target_": "X"},        # new component: before train
        "+train#handlers": [3],                # MONAI merge key: extend a list
        "+train#objects": {"t": "@t"},         # ... or update a dict
        "train#handlers#0": 0,                 # nested override by index
        "-network_def#x": None,                # removal
    })
    assert list(out) == ["a", "tunable", "network_def", "component", "train", "run"]
    assert out["train"] == {"handlers": [0, 2, 3], "objects": {"m": "@m", "t": "@t"}}
    assert out["network_def"] == {} and base["network_def"] == {"x": 1}  # the base is not modified


def test_overlay_rules_on_flat_overlay_files() -> None:
    """multi_gpu_train.json and evaluate.json have literal ids such as 'train#sampler'."""
    base = {"train#sampler": {"_target_": "S"}, "train#dataloader#sampler": "@train#sampler"}
    out = apply_overlay(base, {"-train#sampler": None, "train#dataloader#sampler": None})
    assert out == {"train#dataloader#sampler": None}


@pytest.mark.parametrize(
    "overlay, message",
    [
        ({"train#nothing#x": 1}, "'train#nothing'"),
        ({"-train#missing": None}, "removes 'train#missing'"),
        ({"+train#missing": [1]}, "extends 'train#missing'"),
        ({"+train#handlers": {"a": 1}}, "must extend a list with a list"),
    ],
)
def test_overlay_mistakes_fail_with_the_id(overlay: dict, message: str) -> None:
    with pytest.raises(BundleConfigError, match="my.json") as info:
        apply_overlay({"train": {"handlers": []}}, overlay, where="my.json")
    assert message in str(info.value)


def test_overlay_must_set_what_the_template_leaves_open() -> None:
    with pytest.raises(BundleConfigError, match=r"section 'train' must set \['method'\]"):
        build_bundle("x", {})
    with pytest.raises(BundleConfigError, match="unknown section"):
        build_bundle("x", {"trian": {}})


def test_extra_networks_are_ddp_wrapped_in_multi_gpu_config() -> None:
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    overlay["train"].update({
        "critic_def": {"_target_": "torch.nn.Conv3d", "in_channels": 3, "out_channels": 1, "kernel_size": 1},
        "critic": "$@critic_def.to(@device)",
        "train#trainer#networks": {"critic": "@critic"},
    })
    configs = build_bundle("toy", overlay)
    multi = configs["multi_gpu_train.json"]
    assert list(multi).index("critic") == list(multi).index("network") + 1
    assert multi["critic"] == {"_target_": "torch.nn.parallel.DistributedDataParallel",
                               "module": "$@critic_def.to(@device)", "device_ids": "@ddp_device_ids"}
    overlay["train"]["train#trainer#networks"] = {"critic": "$@critic_def"}
    with pytest.raises(BundleConfigError, match="must reference a top-level id"):
        build_bundle("toy", overlay)


def test_ddp_module_is_train_json_network_written_once(tmp_path: Path) -> None:
    """The multi-GPU wrapper's module is whatever train.json builds as ``network`` (cps's own initialisation, the
    initial weights), taken from the generated train.json, so an overlay never writes it twice."""
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    overlay["train"]["network"] = "$torch.nn.Identity()"
    assert build_bundle("toy", overlay)["multi_gpu_train.json"]["network"]["module"] == "$torch.nn.Identity()"
    for bundle in bundle_dirs():
        train = json.loads((bundle / "configs" / "train.json").read_text())
        multi = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
        assert multi["network"]["module"] == train["network"], bundle.name
    template = tmp_path / "configs"
    template.mkdir()
    for name in CONFIGS + OPTIONAL_CONFIGS:
        text = (REPO / "templates" / "bundle" / "configs" / name).read_text()
        (template / name).write_text(text.replace("<train.json#network>", "<train.json#netwrok>"))
    with pytest.raises(BundleConfigError, match="'<train.json#netwrok>' names an id that train.json does not define"):
        build_bundle("toy", overlay, template_dir=tmp_path)


def test_dumps_format() -> None:
    text = dumps({"a": [1, 2], "b": {"c": ["x"], "d": [{"e": 1}]}, "f": [], "g": {}})
    assert text == (
        '{\n    "a": [1, 2],\n    "b": {\n        "c": ["x"],\n        "d": [\n            {\n'
        '                "e": 1\n            }\n        ]\n    },\n    "f": [],\n    "g": {}\n}\n'
    )
    long = {"k": ["x" * 60, "y" * 60]}
    assert dumps(long).count("\n") == 6  # does not fit in 120 columns: one item per line


def test_write_then_check_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bundle = tmp_path / "mean_teacher"
    bundle.mkdir()
    (bundle / "overlay.json").write_text((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    written = write_bundle(bundle)
    assert {p.relative_to(bundle).as_posix() for p in written} == {
        *(f"configs/{c}" for c in CONFIGS), "configs/strong_views.json", "configs/reference_network.json",
        "configs/logging.conf", "LICENSE"}
    assert write_bundle(bundle) == [] and check_bundles([bundle]) == []
    (bundle / "configs" / "train.json").write_text("{}\n")
    assert check_bundles([bundle])  # drift is reported


def test_cli_check_reports_in_sync(capsys: pytest.CaptureFixture) -> None:
    assert main(["--check"]) == 0
    assert "in sync" in capsys.readouterr().out


def test_template_and_overlays_are_formatted_like_the_generated_files() -> None:
    files = [*(REPO / "templates" / "bundle" / "configs").glob("*.json"), *(d / "overlay.json" for d in bundle_dirs())]
    for path in files:
        text = path.read_text()
        if path.name == "overlay.json":  # hand-written: 4-space indent, one key per line, valid JSON
            assert text.endswith("}\n") and "\t" not in text and json.loads(text), path
        else:
            assert text == dumps(json.loads(text)), f"{path} is not formatted by semiseg.bundle_config.dumps"


def test_inference_gets_the_ids_its_network_references() -> None:
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    overlay["train"].update({"width": 8, "network_def#channels": ["@width", "$@width * 2"]})
    inference = build_bundle("x", overlay)["inference.json"]
    assert inference["width"] == 8 and list(inference).index("width") < list(inference).index("network_def")
    assert inference["network_def"]["channels"] == ["@width", "$@width * 2"]


@pytest.mark.parametrize("bundle", [d.name for d in bundle_dirs()])
def test_train_handlers_are_dicts_that_monai_label_can_read(bundle: str) -> None:
    """MONAI Label's bundle train task calls ``.get("_target_")`` on every ``train#handlers`` entry."""
    train = ConfigParser()
    train.read_config(str(REPO / "bundles" / bundle / "configs" / "train.json"))
    handlers = train["train#handlers"]
    assert handlers and all(isinstance(h, dict) and h.get("_target_") for h in handlers), handlers


def test_handler_references_keep_one_object_after_monai_label_inserts_its_loader() -> None:
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    train = build_bundle("x", overlay)["train.json"]
    entries = train["train"]["handlers"][-3:]
    assert entries == [{"_target_": "semiseg.bundle_config.handler_by_reference", "handler": f"@{name}"}
                       for name in ("ema_teacher", "consistency_rampup_handler", "teacher_saver")]
    index = len(train["train"]["handlers"]) - 3 + 1  # where the first reference is once the loader is in
    parser = ConfigParser(train)
    # what monailabel/tasks/train/bundle.py does before it runs: a CheckpointLoader at index 0 of the list
    parser["train#handlers"].insert(0, {"_target_": "CheckpointLoader", "load_path": "x", "load_dict": {}})
    parser.parse()
    assert parser["train#handlers"][index] == entries[0]
    teacher = parser.get_parsed_content("ema_teacher")
    assert parser.get_parsed_content(f"train#handlers#{index}") is teacher
    assert parser.get_parsed_content("checkpoint#objects#teacher") is teacher


def test_a_train_handlers_entry_that_is_not_a_handler_fails_with_its_index() -> None:
    overlay = json.loads((REPO / "bundles" / "mean_teacher" / "overlay.json").read_text())
    overlay["train"]["+train#handlers"] = ["@ema_teacher", 3]
    with pytest.raises(BundleConfigError, match=r"train#handlers#\d+ must be a handler definition .* got 3"):
        build_bundle("x", overlay)
