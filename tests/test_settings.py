"""Boolean settings: one reader (``semiseg.settings.flag``), and every boolean of every bundle config goes through it.

The walker below reads every generated ``bundles/*/configs/*.json``:

- a *setting* (a top-level id whose value is ``true``/``false``, plus ``amp`` and ``progress``) may be referenced
  only as ``semiseg.settings.flag(@id, 'id')`` (``flag_or_auto`` for ``progress``) or as ``id=@id`` in the
  ``check_run`` range check, which reads it with the same parser; a setting no config references must be read by
  semiseg code through the parser (``READ_BY_CODE``, checked with ``"false"``). A boolean added later and used as
  ``"@id"`` fails here until it is read through the parser.
- a *nested* boolean (a component's own argument, ``train#dataloader#shuffle``, read by no parser) is refused by
  the command-line check when given as the string ``false``, and accepted as ``False``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import AsDiscreted

from semiseg.bundle_checks import check_overrides, check_settings
from semiseg.errors import SettingError, user_error
from semiseg.settings import flag, flag_or_auto
from semiseg.verify import export_uses_trace
from tests.bundles.conftest import BUNDLES, REPO, config

EXTRA_SETTINGS = ("amp", "progress")
"""Boolean settings whose default is not a bool (``amp``: an expression; ``progress``: null, i.e. auto)."""

READ_BY_CODE = {"export_use_trace": lambda value: export_uses_trace(ConfigParser({"export_use_trace": value}))}
"""Boolean settings no config references, and the semiseg reader that takes them (given the setting's value)."""

_CHECK_RUN = "$semiseg.bundle_checks.check_run("


# ----------------------------------------------------------------------------------------------------- the parser


@pytest.mark.parametrize("value", [True, 1, "true", "TRUE", " True ", "1", "yes", "Yes"])
def test_flag_reads_true(value: Any) -> None:
    assert flag(value, "resume") is True


@pytest.mark.parametrize("value", [False, 0, "false", "False", "0", "no", "NO "])
def test_flag_reads_false(value: Any) -> None:
    assert flag(value, "resume") is False


@pytest.mark.parametrize("value", ["maybe", "", 2, -1, 0.0, None, "on", [True]])
def test_flag_refuses_anything_else_naming_the_setting(value: Any) -> None:
    with pytest.raises(SettingError, match=r"setting binarise_label must be true or false .* pass --binarise_label"):
        flag(value, "binarise_label")


def test_flag_or_auto_adds_auto() -> None:
    assert [flag_or_auto(v, "progress") for v in (None, "auto", "AUTO", "no", 1)] == [None, None, None, False, True]
    with pytest.raises(SettingError, match="setting progress must be true, false or auto"):
        flag_or_auto("sometimes", "progress")


def test_range_check_reads_boolean_settings_with_the_parser() -> None:
    check_settings(resume="false", overwrite="YES", amp=0, init_strict=True, binarise_label="no", progress="auto")
    with pytest.raises(SettingError, match="setting resume must be true or false .* got 'maybe'"):
        check_settings(resume="maybe")


# ----------------------------------------------------------------------------------------------------- the walker


def _configs(bundle: str) -> dict[str, Any]:
    """Every JSON config of a bundle (``metadata.json`` aside), by file name."""
    folder = REPO / "bundles" / bundle / "configs"
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "metadata.json"}


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def boolean_settings(configs: dict[str, Any]) -> set[str]:
    """The top-level ids with a ``true``/``false`` value in any of the configs, plus :data:`EXTRA_SETTINGS`."""
    found = {k for c in configs.values() for k, v in c.items() if "#" not in k and isinstance(v, bool)}
    return found | {k for k in EXTRA_SETTINGS if any(k in c for c in configs.values())}


def unparsed_reads(setting: str, text: str) -> int:
    """How many references ``@setting`` in a config string are not read through the parser."""
    references = len(re.findall(rf"@{setting}(?![\w#])", text))
    parsed = len(re.findall(rf"semiseg\.settings\.flag(?:_or_auto)?\(@{setting}, '{setting}'\)", text))
    checked = len(re.findall(rf"\b{setting}=@{setting}(?![\w#])", text)) if text.startswith(_CHECK_RUN) else 0
    return references - parsed - checked


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_boolean_setting_is_read_through_the_parser(bundle: str) -> None:
    configs = _configs(bundle)
    settings = boolean_settings(configs)
    assert {"resume", "overwrite", "binarise_label", "init_strict", "amp", "progress"} <= settings
    problems, referenced = [], set()
    for name, spec in configs.items():
        for text in _strings(spec):
            for setting in settings:
                if re.search(rf"@{setting}(?![\w#])", text):
                    referenced.add(setting)
                if unparsed_reads(setting, text):
                    problems.append(f"{name}: @{setting} read without semiseg.settings.flag in {text!r}")
    for setting in sorted(settings - referenced):
        if setting not in READ_BY_CODE:
            problems.append(f"{setting} is referenced by no config and read by no semiseg code listed here")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("setting", sorted(READ_BY_CODE))
def test_settings_read_by_code_go_through_the_parser(setting: str) -> None:
    read = READ_BY_CODE[setting]
    assert read("false") is False and read("True") is True and read(False) is False
    with pytest.raises(SettingError, match=f"setting {setting} must be true or false"):
        read("maybe")


def test_the_walker_catches_a_boolean_read_without_the_parser() -> None:
    assert unparsed_reads("rot90", "@rot90") == 1
    assert unparsed_reads("rot90", "$not @rot90") == 1
    assert unparsed_reads("rot90", "$semiseg.settings.flag(@rot90, 'rot90') and @rot90") == 1
    assert unparsed_reads("rot90", "$semiseg.settings.flag(@rot90, 'other')") == 1  # the error must name it
    assert unparsed_reads("rot90", "$semiseg.settings.flag(@rot90, 'rot90')") == 0
    assert unparsed_reads("rot90", "$x(rot90=@rot90)") == 1
    assert unparsed_reads("rot90", f"{_CHECK_RUN}rot90=@rot90)") == 0
    assert unparsed_reads("rot90", "@rot90_extra") == 0 and unparsed_reads("rot", "@rot90") == 0
    configs = {"train.json": {"rot90": False, "t": {"rot90": "@rot90"}}, "x.json": {"a#b": True}}
    assert boolean_settings(configs) == {"rot90"}


def _nested_booleans(node: Any, path: str = "") -> Iterator[str]:
    """Ids of the booleans below the top level: ``train#dataloader#shuffle``, ``...#argmax#0``."""
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}#{key}" if path else str(key)
            if key == "_disabled_":
                continue  # MONAI reads "_disabled_" strings itself
            if isinstance(value, bool) and "#" in child:
                yield child
            else:
                yield from _nested_booleans(value, child)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            child = f"{path}#{i}"
            if isinstance(value, bool):
                yield child
            else:
                yield from _nested_booleans(value, child)


def _runs(bundle: str, name: str) -> list[str]:
    """The config files a run using ``name`` merges (overlays are merged with train.json)."""
    if name in ("train.json", "inference.json"):
        return [config(bundle, name)]
    return [config(bundle, "train.json"), config(bundle, name)]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_nested_booleans_refuse_a_command_line_string(bundle: str) -> None:
    for name, spec in _configs(bundle).items():
        ids = sorted(set(_nested_booleans(spec)))
        if not ids:
            continue
        files = _runs(bundle, name)
        check_overrides(files, dict.fromkeys(ids, "False"), from_command_line=True)
        check_overrides(files, dict.fromkeys(ids, "1"), from_command_line=True)
        with pytest.raises(SettingError) as refused:
            check_overrides(files, dict.fromkeys(ids, "false"), from_command_line=True)
        assert len(refused.value.problems) == len(ids), name
        for id_, problem in zip(ids, refused.value.problems):
            assert f"--{id_} 'false'" in problem and f"write --{id_} True or --{id_} False" in problem


def test_a_component_boolean_given_as_a_real_bool_or_disabled_passes(tmp_path: Path) -> None:
    spec = {"loader": {"_target_": "DataLoader", "dataset": [], "shuffle": True, "_disabled_": False}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(spec))
    check_overrides(str(path), {"loader#shuffle": "False", "loader#_disabled_": "false"}, from_command_line=True)
    check_overrides(str(path), {"loader#shuffle": False}, from_command_line=False)
    with pytest.raises(SettingError, match="DataLoader takes as given"):
        check_overrides(str(path), {"loader#shuffle": "no"}, from_command_line=True)
    with pytest.raises(SettingError, match="DataLoader takes as given"):
        check_overrides(str(path), {"loader#shuffle": "False"}, from_command_line=False)  # in-process: a string


# ----------------------------------------------------------------------------------- the settings the issue named


def test_binarise_label_false_on_the_command_line_keeps_the_labels() -> None:
    def binarises(value: Any, key: str) -> bool:
        parser = ConfigParser()
        parser.read_config(config("supervised", "train.json"))
        parser.update({"binarise_label": value})
        return any(isinstance(t, AsDiscreted) for t in parser.get_parsed_content(key).transforms)

    for key in ("train#preprocessing", "validate#preprocessing"):
        assert [binarises(v, key) for v in ("false", "no", False, "true", True)] == [False, False, False, True, True]
    parser = ConfigParser()
    parser.read_config(config("supervised", "train.json"))
    parser.update({"binarise_label": "perhaps"})
    with pytest.raises(Exception) as refused:
        parser.get_parsed_content("train#preprocessing")
    assert "setting binarise_label must be true or false" in str(user_error(refused.value))


def test_init_strict_false_on_the_command_line_is_not_strict(tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(config("supervised", "train.json"))
    full = parser.get_parsed_content("network_def").state_dict()
    partial = {k: v for i, (k, v) in enumerate(full.items()) if i % 2 == 0}
    torch.save(partial, tmp_path / "partial.pt")

    def network(strict: Any) -> Any:
        parser = ConfigParser()
        parser.read_config(config("supervised", "train.json"))
        parser.update({"init_from": str(tmp_path / "partial.pt"), "init_strict": strict, "device": "cpu"})
        return parser.get_parsed_content("network")

    net = network("false")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in partial.items())
    with pytest.raises(Exception) as refused:
        network("true")
    assert re.search("lacks .* pass init_strict=false", str(user_error(refused.value)))
