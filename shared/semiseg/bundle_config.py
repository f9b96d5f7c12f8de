"""Generate every bundle's configs from one template plus the bundle's overlay (``make configs``).

The parts all bundles share (paths, data, loaders, validation, checkpoints, logging, inference pre/post-processing,
metadata boilerplate, the multi-GPU overlay, ``logging.conf``, ``LICENSE``) are written once, in
``templates/bundle/``. A bundle is described by ``bundles/<name>/overlay.json``: what its method adds or changes
(network, method object, handlers, hyper-parameters). The committed ``bundles/<name>/configs/*.json`` stay complete
files, because MONAI Label and the model-zoo tools run ``train.json`` alone, but they are generated: each carries a
``"_generated_"`` note, and ``python -m semiseg.bundle_config --check`` (run by the test suite) fails when a
committed file differs from what the template and overlay give. See ``docs/architecture.md``, "Adding a method".

``overlay.json`` has one section per generated config (``train``, ``inference``, ``evaluate``,
``multi_gpu_train``, ``metadata``, ``la``; ``strong_views`` and ``reference_network`` are opt-in: their file is
generated only for bundles whose overlay has the section, an empty one taking the template as it is), each written
like a MONAI config overlay (``--config_file "['a.json','b.json']"``): ``"id#path": value`` replaces or adds an
item, ``"+id#path": [...]`` extends a list or updates a dict (MONAI's merge key). Two rules are the generator's
own: ``"-id#path": null`` removes an item (e.g. the unlabelled loader of the supervised baseline), and an override
of a nested id must name an id the template has, so a typo fails instead of adding a dead entry.

Derived, never written twice:

- ``inference.json`` takes ``network_def``, ``num_classes``, ``in_channels``, ``roi_size`` and the sliding-window
  settings from the generated ``train.json`` (template items whose value is ``"<train.json>"``), with every
  top-level id they reference (e.g. ``"@dropout"`` in ``network_def``);
- ``multi_gpu_train.json`` wraps every extra trainable part listed in ``train#trainer#networks`` in
  ``DistributedDataParallel``, like the main network;
- a value ``"<train.json#id>"`` in another template takes train.json's ``id``: the multi-GPU wrapper's ``module``
  is train.json's ``network`` expression (initial weights, a bundle's own initialisation), so it is written once;
  as a list item it takes the item (its items, for a list): the multi-GPU and evaluate ``initialize`` run
  train.json's checks without repeating them;
- ``bundle_root`` is the bundle's folder (``__BUNDLE__`` in the template).
- a value ``"<settings>"`` in ``train.json`` (``run_record#settings``) becomes ``{"id": "@id"}`` for every top-level
  setting of the generated ``train.json`` that is not in the sibling ``may_change`` list: every id whose value is a
  literal (a number, a string that is not an expression or reference, null, or a list of such; a bool is read as
  ``"$semiseg.settings.flag(@id, 'id')"``), so that a setting an overlay adds is recorded in ``checkpoint.pt`` and
  compared on ``--resume true`` (:mod:`semiseg.handlers.run_record`) without being listed.
- a reference in ``train#handlers`` (``"@ema_teacher"``, as overlays write it) becomes
  ``{"_target_": "semiseg.bundle_config.handler_by_reference", "handler": "@ema_teacher"}``: the same object,
  but an entry MONAI Label's bundle train task can read (it calls ``.get("_target_")`` on every entry and inserts
  its ``CheckpointLoader`` at index 0, so the top-level id stays the definition and the list only refers to it).

New top-level ids from an overlay are placed where a reader of ``train.json`` looks for them: tunables before
``network_def``, component definitions (dicts) before ``train`` (or ``preprocessing`` in ``inference.json``).
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser

__all__ = [
    "CONFIGS",
    "COPIED",
    "BundleConfigError",
    "apply_overlay",
    "build_bundle",
    "check_bundles",
    "dumps",
    "handler_by_reference",
    "write_bundle",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_DIR = REPO_ROOT / "templates" / "bundle"
BUNDLES_DIR = REPO_ROOT / "bundles"
OVERLAY_NAME = "overlay.json"
CONFIGS = ("train.json", "inference.json", "evaluate.json", "multi_gpu_train.json", "metadata.json", "la.json")
# generated only for bundles whose overlay has the section (opt-in overlays, merged after train.json/inference.json)
OPTIONAL_CONFIGS = ("strong_views.json", "reference_network.json")
COPIED = ("configs/logging.conf", "LICENSE")
GENERATED_KEY = "_generated_"
FROM_TRAIN = "<train.json>"
FROM_OVERLAY = "<overlay>"
SETTINGS = "<settings>"
_NOT_SETTINGS = ("imports", "initialize", "run", "training", "finalize")
BUNDLE_TOKEN = "__BUNDLE__"
_DDP = "torch.nn.parallel.DistributedDataParallel"
HANDLER_LISTS = ("train#handlers",)  # lists MONAI Label reads entry by entry as dicts
_BY_REFERENCE = "semiseg.bundle_config.handler_by_reference"
_WIDTH = 120


class BundleConfigError(ValueError):
    """A template or overlay that cannot give a valid bundle config; the message names the file and the id."""


def dumps(config: Any) -> str:
    """Format a config the way every committed config is formatted.

    4-space indent, one key per line; a list of scalars stays on one line when it fits in 120 columns
    (``"roi_size": [48, 48, 48]``). Ends with a newline.

    Args:
        config: a JSON-serialisable config.

    Returns:
        The text.
    """

    def fmt(value: Any, indent: int, prefix_len: int) -> str:
        pad = " " * (indent + 4)
        if isinstance(value, dict):
            if not value:
                return "{}"
            items = []
            for key, item in value.items():
                head = f"{pad}{json.dumps(key)}: "
                items.append(head + fmt(item, indent + 4, len(head)))
            return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
        if isinstance(value, list):
            if not value:
                return "[]"
            if all(not isinstance(v, (dict, list)) for v in value):
                inline = json.dumps(value)
                if prefix_len + len(inline) + 1 <= _WIDTH:
                    return inline
            return "[\n" + ",\n".join(pad + fmt(v, indent + 4, len(pad)) for v in value) + "\n" + " " * indent + "]"
        return json.dumps(value)

    return fmt(config, 0, 0) + "\n"


def _locate(config: dict, target: str, where: str, key: str) -> tuple[Any, Any]:
    """The container holding ``target`` and its index in it: a literal top-level key first (overlay files such as
    ``multi_gpu_train.json`` have ids like ``"train#sampler"``), else a ``#`` path into nested items."""
    if target in config or "#" not in target:
        return config, target
    parent, _, leaf = target.rpartition("#")
    parser = ConfigParser(config)
    if parent not in parser:
        raise BundleConfigError(f"{where}: {key!r} names {parent!r}, which the template does not define.")
    container = parser[parent]
    if isinstance(container, list):
        return container, int(leaf)
    if not isinstance(container, dict):
        raise BundleConfigError(f"{where}: {key!r} goes inside {parent!r}, which is a {type(container).__name__}.")
    return container, leaf


def _has(container: Any, index: Any) -> bool:
    return (0 <= index < len(container)) if isinstance(container, list) else index in container


def _insert_top_level(config: dict, key: str, value: Any, after: str | None = None) -> dict:
    """Place a new top-level id: tunables before ``network_def``, components before ``train``/``preprocessing``
    (or right after ``after``), so generated files read top to bottom like a model-zoo ``train.json``."""
    if after is not None and after in config:
        result: dict = {}
        for k, v in config.items():
            result[k] = v
            if k == after:
                result[key] = value
        return result
    anchors = ("train", "preprocessing") if isinstance(value, dict) else ("network_def",)
    anchor = next((a for a in anchors if a in config), None)
    if anchor is None:
        config[key] = value
        return config
    result = {}
    for k, v in config.items():
        if k == anchor:
            result[key] = value
        result[k] = v
    return result


def apply_overlay(base: Mapping, overlay: Mapping, where: str = "overlay") -> dict:
    """Apply one overlay section to a config (see the module docstring for the rules).

    Args:
        base: the config to change (not modified).
        overlay: ``{"id#path": value, "+id#path": [...]/{...}, "-id#path": null}``.
        where: names the overlay in error messages (file and section).

    Returns:
        The new config.

    Raises:
        BundleConfigError: on an id the base does not have (for nested overrides, merges and removals) or a merge of
            mismatched types.
    """
    config: dict = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        value = copy.deepcopy(value)
        op, target = (key[0], key[1:]) if key[:1] in ("+", "-") else ("", key)
        container, index = _locate(config, target, where, key)
        if op == "-":
            if not _has(container, index):
                raise BundleConfigError(f"{where}: {key!r} removes {target!r}, which the template does not define.")
            del container[index]
        elif op == "+":
            if not _has(container, index):
                raise BundleConfigError(f"{where}: {key!r} extends {target!r}, which the template does not define.")
            current = container[index]
            if isinstance(current, list) and isinstance(value, list):
                current.extend(value)
            elif isinstance(current, dict) and isinstance(value, dict):
                current.update(value)
            else:
                raise BundleConfigError(
                    f"{where}: {key!r} must extend a list with a list or a dict with a dict; the template has "
                    f"{type(current).__name__}, the overlay {type(value).__name__}."
                )
        elif container is config and index not in config:
            config = _insert_top_level(config, index, value)
        else:
            container[index] = value
    return config


def _replace_token(value: Any, name: str) -> Any:
    if isinstance(value, str):
        return value.replace(BUNDLE_TOKEN, name)
    if isinstance(value, list):
        return [_replace_token(v, name) for v in value]
    if isinstance(value, dict):
        return {k: _replace_token(v, name) for k, v in value.items()}
    return value


def _find(value: Any, sentinel: str, path: str = "") -> list[str]:
    if value == sentinel:
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _find(v, sentinel, f"{path}#{k}" if path else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _find(v, sentinel, f"{path}#{i}" if path else str(i))]
    return []


_REFERENCE = re.compile(r"@([A-Za-z_][\w]*)")


def _take_from_train(base: dict, train: Mapping) -> dict:
    """Fill the ``"<train.json>"`` items of ``base`` from the generated ``train.json``, with every top-level id
    they reference (``network_def``'s ``"@dropout"``, say) that ``base`` lacks, placed before ``network_def``."""
    parser = ConfigParser(dict(train))
    for path in _find(base, FROM_TRAIN):
        value = copy.deepcopy(parser[path])
        pending = _REFERENCE.findall(json.dumps(value))
        while pending:
            ref = pending.pop()
            if ref not in base and ref in train:
                base = _insert_top_level(base, ref, copy.deepcopy(train[ref]))
                pending += _REFERENCE.findall(json.dumps(train[ref]))
        target = ConfigParser(base)
        target[path] = value
        base = target.get()
    return base


_SPLICE = re.compile(r"^<train\.json#(.+)>$")


def _splice_from_train(value: Any, train: Mapping, where: str) -> Any:
    """Replace ``"<train.json#id>"`` by the generated ``train.json``'s ``id``: a value is replaced whole (the DDP
    wrapper's ``module`` is train.json's ``network`` expression), a list element by the item (its items, when a
    list: ``multi_gpu_train.json`` and ``evaluate.json`` run train.json's ``initialize`` steps without repeating
    them)."""
    if isinstance(value, dict):
        return {k: _splice_from_train(v, train, where) for k, v in value.items()}
    if isinstance(value, str) and _SPLICE.match(value):
        return _taken_from_train(value, train, where)
    if not isinstance(value, list):
        return value
    out: list = []
    for item in value:
        match = _SPLICE.match(item) if isinstance(item, str) else None
        if match is None:
            out.append(_splice_from_train(item, train, where))
            continue
        taken = _taken_from_train(item, train, where)
        out.extend(taken if isinstance(taken, list) else [taken])
    return out


def _taken_from_train(sentinel: str, train: Mapping, where: str) -> Any:
    """A copy of the generated ``train.json``'s item named by ``"<train.json#id>"``."""
    ref = _SPLICE.match(sentinel).group(1)  # type: ignore[union-attr]
    parser = ConfigParser(dict(train))
    if ref not in parser:
        raise BundleConfigError(f"{where}: {sentinel!r} names an id that train.json does not define.")
    return copy.deepcopy(parser[ref])


def handler_by_reference(handler: Any) -> Any:
    """Return ``handler`` unchanged: the ``_target_`` of a generated ``train#handlers`` entry that refers to a
    handler defined under its own top-level id (see the module docstring).

    Args:
        handler: the handler object the entry's ``"handler": "@id"`` resolves to.

    Returns:
        The same object, so ``checkpoint#objects`` and the method see the instance the trainer runs.
    """
    return handler


def _handlers_by_reference(config: dict, where: str) -> dict:
    """Wrap each string entry (``"@id"`` or ``"$expr"``) of the :data:`HANDLER_LISTS` in a
    :func:`handler_by_reference` component, in place."""
    parser = ConfigParser(config)
    for list_id in HANDLER_LISTS:
        if list_id not in parser:
            continue
        handlers = parser[list_id]
        if not isinstance(handlers, list):
            raise BundleConfigError(f"{where}: {list_id!r} must be a list of handlers, got {type(handlers).__name__}.")
        for i, item in enumerate(handlers):
            if isinstance(item, str):
                handlers[i] = {"_target_": _BY_REFERENCE, "handler": item}
            elif not isinstance(item, dict):
                raise BundleConfigError(
                    f"{where}: {list_id}#{i} must be a handler definition (a dict with _target_) or a reference "
                    f"(\"@id\"), got {item!r}."
                )
    return config


def _is_literal(value: Any) -> bool:
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    return value is None or isinstance(value, (bool, int, float))


def _settings(config: Mapping, may_change: Iterable[str] = ()) -> dict[str, str]:
    """``{"id": "@id"}`` for the top-level settings of a generated config not in ``may_change`` (see the module
    docstring); a boolean setting is read through ``semiseg.settings.flag``."""
    skip = set(may_change)
    return {
        k: f"$semiseg.settings.flag(@{k}, '{k}')" if isinstance(v, bool) else f"@{k}"
        for k, v in config.items()
        if not k.startswith("_") and k not in _NOT_SETTINGS and "#" not in k and k not in skip and _is_literal(v)
    }


def _fill_settings(config: dict, where: str) -> dict:
    """Replace every ``"<settings>"`` value of ``config`` with :func:`_settings` of it, in place."""
    parser = ConfigParser(config)
    for path in _find(config, SETTINGS):
        parent = parser[path.rpartition("#")[0]] if "#" in path else config
        may_change = parent.get("may_change", []) if isinstance(parent, dict) else []
        if not (isinstance(may_change, list) and all(isinstance(m, str) for m in may_change)):
            raise BundleConfigError(f"{where}: the 'may_change' beside {path!r} must be a list of setting ids.")
        parser[path] = _settings(config, may_change)
    return parser.get()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleConfigError(f"{path} does not exist.") from None
    except json.JSONDecodeError as err:
        raise BundleConfigError(f"{path} is not valid JSON: {err}") from None


def _ddp_overrides(train: Mapping) -> dict:
    """``DistributedDataParallel`` wrappers for the extra trainable parts listed in ``train#trainer#networks``."""
    parser = ConfigParser(dict(train))
    networks = parser["train#trainer#networks"] if "train#trainer#networks" in parser else {}
    overrides = {}
    for name, ref in networks.items():
        if not (isinstance(ref, str) and ref.startswith("@") and ref[1:] in parser):
            raise BundleConfigError(
                f"train#trainer#networks#{name} must reference a top-level id of train.json (\"@{name}\"), got {ref!r}."
            )
        overrides[ref[1:]] = {"_target_": _DDP, "module": parser[ref[1:]], "device_ids": "@ddp_device_ids"}
    return overrides


def build_bundle(
    name: str, overlay: Mapping, template_dir: str | Path = TEMPLATE_DIR, overlay_path: str | Path | None = None
) -> dict[str, dict]:
    """The complete configs of one bundle, from the template and the bundle's overlay.

    Args:
        name: the bundle's folder name (``bundle_root`` is ``bundles/<name>`` in the repository, ``.`` elsewhere).
        overlay: the parsed ``overlay.json``: ``{"train": {...}, "metadata": {...}, ...}``.
        template_dir: folder with ``configs/<CONFIGS>``.
        overlay_path: the overlay's file, for messages and the ``_generated_`` note.

    Returns:
        ``{"train.json": {...}, "inference.json": {...}, ...}``.

    Raises:
        BundleConfigError: on an unknown section, a bad id, or a template value the overlay had to set and did not.
    """
    template_dir = Path(template_dir)
    source = str(overlay_path or f"bundles/{name}/{OVERLAY_NAME}")
    sections = {Path(c).stem for c in CONFIGS + OPTIONAL_CONFIGS}
    unknown = set(overlay) - sections
    if unknown:
        raise BundleConfigError(f"{source}: unknown section(s) {sorted(unknown)}; sections are {sorted(sections)}.")
    configs: dict[str, dict] = {}
    for filename in CONFIGS + tuple(c for c in OPTIONAL_CONFIGS if Path(c).stem in overlay):
        stem = Path(filename).stem
        base = _replace_token(_load_json(template_dir / "configs" / filename), name)
        if filename == "inference.json":
            base = _take_from_train(base, configs["train.json"])
        if filename == "multi_gpu_train.json":
            for key, value in reversed(_ddp_overrides(configs["train.json"]).items()):
                base = {**base, key: value} if key in base else _insert_top_level(base, key, value, after="network")
        if filename != "train.json":
            base = _splice_from_train(base, configs["train.json"], f"templates/bundle/configs/{filename}")
        config = apply_overlay(base, overlay.get(stem, {}), where=f"{source} section {stem!r}")
        if filename == "train.json":
            config = _handlers_by_reference(config, f"{source} section {stem!r}")
            config = _fill_settings(config, f"{source} section {stem!r}")
        missing = _find(config, FROM_OVERLAY) + _find(config, FROM_TRAIN)
        if missing:
            raise BundleConfigError(f"{source} section {stem!r} must set {missing} (the template leaves them open).")
        note = (
            f"generated from templates/bundle/configs/{filename} and bundles/{name}/{OVERLAY_NAME} by `make configs`;"
            " edit those, not this file"
        )
        configs[filename] = {GENERATED_KEY: note, **{k: v for k, v in config.items() if k != GENERATED_KEY}}
    return configs


def _expected_files(bundle_dir: Path, template_dir: Path) -> dict[str, str]:
    overlay_path = bundle_dir / OVERLAY_NAME
    overlay = _load_json(overlay_path)
    configs = build_bundle(bundle_dir.name, overlay, template_dir, overlay_path)
    files = {f"configs/{name}": dumps(config) for name, config in configs.items()}
    for rel in COPIED:
        files[rel] = (template_dir / rel).read_text()
    return files


def write_bundle(bundle_dir: str | Path, template_dir: str | Path = TEMPLATE_DIR) -> list[Path]:
    """Write a bundle's generated files (configs and the copied ``logging.conf`` and ``LICENSE``).

    Args:
        bundle_dir: ``bundles/<name>``, holding ``overlay.json``.
        template_dir: the template folder.

    Returns:
        The files that changed.
    """
    bundle_dir, template_dir = Path(bundle_dir), Path(template_dir)
    changed = []
    for rel, text in _expected_files(bundle_dir, template_dir).items():
        path = bundle_dir / rel
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def check_bundles(bundle_dirs: Iterable[str | Path], template_dir: str | Path = TEMPLATE_DIR) -> list[str]:
    """Compare committed bundle files with what the template and overlays give.

    Args:
        bundle_dirs: bundle folders.
        template_dir: the template folder.

    Returns:
        One unified diff per file that drifted (empty when everything is in sync).
    """
    problems = []
    for bundle_dir in map(Path, bundle_dirs):
        for rel, text in _expected_files(bundle_dir, Path(template_dir)).items():
            path = bundle_dir / rel
            actual = path.read_text() if path.is_file() else ""
            if actual != text:
                diff = difflib.unified_diff(
                    actual.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "generated"
                )
                problems.append("".join(list(diff)[:60]))
    return problems


def bundle_dirs(root: str | Path = BUNDLES_DIR) -> list[Path]:
    """Every bundle folder under ``root`` that has an ``overlay.json``, sorted."""
    return sorted(p for p in Path(root).iterdir() if (p / OVERLAY_NAME).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semiseg.bundle_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", help="bundle names (default: every bundles/<name> with an overlay)")
    parser.add_argument("--check", action="store_true", help="only report drift; exit 1 if any file differs")
    args = parser.parse_args(argv)
    dirs = [BUNDLES_DIR / b for b in args.bundles] if args.bundles else bundle_dirs()
    try:
        if args.check:
            problems = check_bundles(dirs)
            for problem in problems:
                print(problem)
            if problems:
                print(f"{len(problems)} generated file(s) differ from templates/bundle + overlay: run `make configs`.")
                return 1
            print(f"{len(dirs)} bundle(s) in sync with templates/bundle.")
            return 0
        for bundle_dir in dirs:
            changed = write_bundle(bundle_dir)
            names = ", ".join(str(p.relative_to(bundle_dir)) for p in changed) or "up to date"
            print(f"{bundle_dir.name}: {names}")
    except BundleConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
