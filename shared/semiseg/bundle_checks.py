"""Checks a bundle run makes before any work: misspelt ``--id value`` overrides and out-of-range settings.

MONAI merges command-line overrides into the config before anything runs, and an override naming an id the config
does not have is silently *added* as a new id: ``--max_iteration 4`` (for ``max_iterations``) trains the default
6000 iterations over the existing checkpoints. Config expressions cannot see MONAI's parser, so the first
``initialize`` expression of each workflow calls :func:`check_run`, which

- when the process is ``python -m monai.bundle run ...`` (also under ``torchrun``), reads the ``--id`` arguments
  from ``sys.argv`` (and ``--args_file``) and compares them with the ids of the files named by ``--config_file``
  (:func:`check_overrides`): an unknown top-level id fails with the closest known ids (``difflib``); a nested id
  (``train#trainer#max_epochs``, ``network_def#dropout``) must name an existing parent, and a new key under a
  component must be an argument its ``_target_`` takes;
- checks the values of the settings it is given against :data:`SETTING_RULES` (:func:`check_settings`):
  ``--max_iterations 0`` fails with the setting's name instead of a ``ZeroDivisionError``, ``-5`` no longer trains,
  ``--dropout 1.5`` fails before the network is built, ``--resume maybe`` before anything is read (boolean settings
  are read by :func:`semiseg.settings.flag`).

Two more ``initialize`` steps check what a setting means for the run: :func:`check_network_input` (the network
takes a ``roi_size`` input: a forward pass on the ``meta`` device) and :func:`check_weights` (the weights inference
and evaluate load exist, are readable and fit the network: :mod:`semiseg.checkpoint_files`).

An in-process ``monai.bundle.run(config_file=..., **overrides)`` call does not go through ``sys.argv``; call
:func:`check_overrides` with the same arguments to check it. Every failure is a
:class:`~semiseg.errors.SettingError`, which the command line reports in one line (:mod:`semiseg.errors`).

This module imports only MONAI, torch and the standard library (and semiseg modules relatively), so an
``inference.json`` can use it and still run from a bundle zip with MONAI alone (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import ast
import copy
import difflib
import functools
import inspect
import math
import os
import pydoc
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.bundle.config_item import ComponentLocator, ConfigComponent

from .checkpoint_files import CheckpointFileError, read_checkpoint, state_dict_of, state_dict_problem
from .errors import SettingError
from .settings import AUTO_WORDS, flag, is_flag

__all__ = [
    "SETTING_RULES",
    "RunArgs",
    "check_network_input",
    "check_overrides",
    "check_run",
    "check_settings",
    "check_weights",
    "cli_run_args",
    "parse_run_args",
    "tracking_ids",
]

_CLI_MODULE = "monai.bundle.__main__"
_ID_SEP = "#"
_MAX_LISTED = 12


# ------------------------------------------------------------------------------------------------ command-line args


@dataclass
class RunArgs:
    """What ``python -m monai.bundle run`` was given, as MONAI's ``run`` receives it.

    Attributes:
        config_file: the ``--config_file`` value (a path, a list of paths, or a comma-separated string), or None.
        overrides: the ``--id value`` pairs that are not arguments of ``monai.bundle.run``, values unparsed.
        args_file: the ``--args_file`` value, or None.
        tracking: the ``--tracking`` value (``"mlflow"``, a settings file), or None.
    """

    config_file: Any = None
    overrides: dict[str, Any] = field(default_factory=dict)
    args_file: str | None = None
    tracking: Any = None


def _run_parameters() -> frozenset[str]:
    """The named arguments of ``monai.bundle.run`` (everything else on its command line is an override)."""
    from monai.bundle import scripts

    params = inspect.signature(scripts.run).parameters.values()
    return frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD)


def _is_flag(token: str) -> bool:
    """A ``--name`` / ``-n`` token, as Python Fire (MONAI's command-line parser) tells them from values."""
    if token.startswith("--"):
        return True
    return len(token) >= 2 and token[0] == "-" and token[1].isalpha()


def _literal(value: str) -> Any:
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def parse_run_args(args: Sequence[str]) -> RunArgs:
    """Split the arguments after ``python -m monai.bundle run`` the way Python Fire hands them to MONAI's ``run``.

    ``--key value``, ``--key=value`` and a bare ``--key`` (``True``) are keyword arguments, ``-`` in keys becomes
    ``_``; tokens that are not flags (``training``) are positional; a lone ``--`` ends the arguments (what follows
    is for Fire itself).

    Args:
        args: the tokens after ``run``.

    Returns:
        The config files, the overrides and the args file.
    """
    run_params = _run_parameters()
    result = RunArgs()
    tokens = list(args)
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            break
        if not _is_flag(token):
            continue  # positional: run_id, init_id, ...
        key, sep, value = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not sep:
            if index < len(tokens) and not _is_flag(tokens[index]):
                value = tokens[index]
                index += 1
            else:
                value = "True"
        if key == "config_file":
            result.config_file = _literal(value)
        elif key == "args_file":
            result.args_file = value
        elif key == "tracking":
            result.tracking = _literal(value)
        elif key not in run_params:
            result.overrides[key] = value
    return result


def cli_run_args(argv: Sequence[str] | None = None) -> RunArgs | None:
    """The :class:`RunArgs` of this process when it is ``python -m monai.bundle run ...``, else None.

    ``--args_file`` is read as MONAI reads it: its ``config_file`` is used when the command line gives none, and
    its other non-``run`` keys are overrides (the command line's win).

    Args:
        argv: the command line (default ``sys.argv``); given explicitly, the check that this process runs
            ``monai.bundle`` is skipped.

    Returns:
        The parsed arguments, or None when the process is not ``monai.bundle run`` (a test, a script, a notebook).
    """
    if argv is None:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if getattr(spec, "name", None) != _CLI_MODULE:
            return None
        argv = sys.argv
    if len(argv) < 2 or argv[1] != "run":
        return None
    parsed = parse_run_args(argv[2:])
    if parsed.args_file:
        from_file = ConfigParser.load_config_file(parsed.args_file)
        run_params = _run_parameters()
        if parsed.config_file is None:
            parsed.config_file = from_file.get("config_file")
        if parsed.tracking is None:
            parsed.tracking = from_file.get("tracking")
        parsed.overrides = {**{k: v for k, v in from_file.items() if k not in run_params}, **parsed.overrides}
    return parsed


# ------------------------------------------------------------------------------------------------------- overrides


def _close(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)


@functools.cache
def _locator() -> ComponentLocator:
    return ComponentLocator()


def _component_arguments(config: Mapping[str, Any]) -> frozenset[str] | None:
    """The keyword arguments the ``_target_`` of a component config takes, or None when it is open-ended or
    cannot be resolved (then any key is allowed). ``**kwargs`` passed on to a base class are followed."""
    target = config.get("_target_")
    if not isinstance(target, str) or target.startswith("$"):
        return None
    try:
        path = ConfigComponent({"_target_": target}, locator=_locator()).resolve_module_name()
        obj = pydoc.locate(path) if isinstance(path, str) else None
    except Exception:  # an unresolvable target fails later, in MONAI, with its own message
        return None
    if obj is None:
        return None
    if inspect.isclass(obj):
        functions = [c.__dict__["__init__"] for c in obj.__mro__ if "__init__" in c.__dict__]
    else:
        functions = [obj]
    names: set[str] = {"_target_", "_disabled_", "_requires_", "_desc_", "_mode_"}
    for function in functions:
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names.update(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return frozenset(names)
    return None  # **kwargs all the way up


def _override_problem(parser: ConfigParser, key: str, where: str) -> str | None:
    """Why the override ``--key`` names no id of the config (None when it does, or adds a valid nested key)."""
    id_ = key.lstrip("+").replace("::", _ID_SEP)
    if id_ in parser or id_.startswith("_meta_"):
        return None
    parts = id_.split(_ID_SEP)
    if len(parts) == 1:
        top = [k for k in parser.get() if not k.startswith("_")]
        close = _close(id_, top)
        if close:
            hint = "did you mean " + " or ".join(f"--{c}" for c in close) + "?"
        else:
            tunables = [k for k in top if not isinstance(parser[k], dict) and k != "imports"]
            more = ", ..." if len(tunables) > _MAX_LISTED else ""
            hint = f"its settings are {', '.join(tunables[:_MAX_LISTED])}{more}."
        return f"unknown setting --{key}: {where} has no id '{id_}'; {hint} Fix the name (nothing was run)."
    existing = 0  # how many leading parts name an existing id
    while existing < len(parts) - 1 and _ID_SEP.join(parts[: existing + 1]) in parser:
        existing += 1
    if existing < len(parts) - 1:
        parent = _ID_SEP.join(parts[: existing + 1])
        above = _ID_SEP.join(parts[:existing])
        siblings = parser[above] if existing else parser.get()
        keys = [str(k) for k in siblings] if isinstance(siblings, dict) else []
        close = [f"{above}{_ID_SEP}{c}" if above else c for c in _close(parts[existing], keys)]
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        return (
            f"unknown setting --{key}: its parent '{parent}' is not an id of {where}; {hint}"
            "A nested override must extend an existing id. Fix the name (nothing was run)."
        )
    parent_id, leaf = _ID_SEP.join(parts[:-1]), parts[-1]
    parent = parser[parent_id]
    if isinstance(parent, list):
        if not (leaf.isdigit() and int(leaf) < len(parent)):
            return (
                f"unknown setting --{key}: '{parent_id}' is a list of {len(parent)} items in {where}, so the last "
                f"part must be an index 0..{len(parent) - 1}. Fix the name (nothing was run)."
            )
        return None
    if not isinstance(parent, dict):
        return (
            f"unknown setting --{key}: '{parent_id}' is a value ({parent!r}) in {where}, not a dict to add "
            f"'{leaf}' to; did you mean --{parent_id}? Fix the name (nothing was run)."
        )
    accepted = _component_arguments(parent)
    if accepted is None or leaf in accepted:
        return None
    close = [f"{parent_id}{_ID_SEP}{c}" for c in _close(leaf, [*accepted, *map(str, parent)]) if not c.startswith("_")]
    takes = ", ".join(sorted(a for a in accepted if not a.startswith("_")))
    hint = f"did you mean --{' or --'.join(close)}? " if close else f"it takes {takes}. "
    return (
        f"unknown setting --{key}: '{parent_id}' builds {parent['_target_']}, which takes no argument '{leaf}'; "
        f"{hint}Fix the name (nothing was run)."
    )


def tracking_ids(tracking: Any) -> list[str]:
    """The ids MONAI's experiment tracking adds to a config (``--tracking mlflow`` takes ``--experiment_name``...).

    Args:
        tracking: the ``tracking`` argument of ``monai.bundle.run``: None, a name such as ``"mlflow"``, a settings
            dict or a settings file.

    Returns:
        The top-level ids of the tracking settings' ``configs``.
    """
    if tracking is None:
        return []
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
    else:
        settings = ConfigParser.load_config_files(tracking)
    return [str(k) for k in dict(settings.get("configs", {}))]


def _component_flag_problem(parser: ConfigParser, key: str, value: Any) -> str | None:
    """Why a command-line ``value`` for a nested boolean (a component's own ``true``/``false`` argument, which no
    :func:`semiseg.settings.flag` reads) would be misread, or None.

    The command line (Python Fire) passes ``True`` / ``False`` as bools but ``true`` / ``false`` / ``no`` as
    strings, and a component given the string ``"false"`` takes it as true.
    """
    id_ = key.lstrip("+").replace("::", _ID_SEP)
    if _ID_SEP not in id_ or id_ not in parser or not isinstance(parser[id_], bool):
        return None
    if id_.rpartition(_ID_SEP)[2] == "_disabled_":
        return None  # MONAI reads a "_disabled_" string itself ("false" is false)
    if isinstance(value, bool) or (_is_int(value) and value in (0, 1)):
        return None
    parent = parser[id_.rpartition(_ID_SEP)[0]]
    target = parent.get("_target_") if isinstance(parent, dict) else None
    who = f"{target} takes" if isinstance(target, str) else "the config takes"
    return (
        f"setting --{key} {value!r}: '{id_}' is a true/false argument that {who} as given, and the command line "
        f"passes {value!r} as a string, which Python reads as true; write --{key} True or --{key} False "
        "(capitalised: the command line turns these into booleans) (nothing was run)."
    )


def check_overrides(
    config_file: str | Sequence[str], overrides: Iterable[str] | Mapping[str, Any], tracking: Any = None,
    from_command_line: bool = False,
) -> None:
    """Fail when an override names no id of the config files (a misspelt setting), or would be misread.

    A value for a nested boolean id (``--train#dataloader#shuffle false``: a component's own argument, read by no
    :func:`semiseg.settings.flag`) must be a real bool: given on the command line as ``false``, it would arrive as
    the string ``"false"``, which Python reads as true. Top-level boolean settings (``--binarise_label false``)
    are read by :func:`semiseg.settings.flag` where they are used and accept ``true``/``false``/``yes``/``no``.

    Args:
        config_file: the config file(s) the run merges, as given to ``monai.bundle.run`` (a path, a list, or a
            comma-separated string).
        overrides: the override ids (or ``{id: value}``), e.g. ``["max_iterations", "network_def#dropout"]``.
        tracking: ``monai.bundle.run``'s ``tracking`` argument; the ids it adds (:func:`tracking_ids`) are known.
        from_command_line: the values of ``overrides`` are command-line text (:func:`cli_run_args`), which the
            command line turns into Python values as Python Fire does (``False`` -> False, ``false`` -> "false").

    Raises:
        SettingError: one problem per unknown id, naming it, the config files, and the closest known ids; one per
            nested boolean given a value that is not a bool (or 0 / 1).
    """
    merged = ConfigParser.load_config_files(config_file)
    for key in tracking_ids(tracking):
        merged.setdefault(key, None)
    parser = ConfigParser(merged)
    files = [config_file] if isinstance(config_file, str) else [str(f) for f in config_file]
    where = " + ".join(files)
    problems = [p for key in overrides if (p := _override_problem(parser, str(key), where)) is not None]
    if isinstance(overrides, Mapping):
        for key, value in overrides.items():
            given = _literal(value) if from_command_line and isinstance(value, str) else value
            problem = _component_flag_problem(parser, str(key), given)
            if problem is not None:
                problems.append(problem)
    if problems:
        raise SettingError(problems)


# -------------------------------------------------------------------------------------------------------- settings


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer >= {low}"


def _number(
    low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    if high == math.inf:
        return ok, f"a number {'>' if low_open else '>='} {low:g}"
    return ok, f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


_FLAG = "true or false (also 1/0, yes/no, any case)"


def _roi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and v >= 1 for v in value)


def _overlap(value: Any) -> bool:
    """A fraction in [0, 1), or one per spatial axis (the LA protocol's ``[0.839, 0.839, 0.95]``)."""
    values = value if isinstance(value, (list, tuple)) and len(value) == 3 else [value]
    return all(_is_number(v) and 0.0 <= v < 1.0 for v in values)


def _data_device(value: Any) -> bool:
    """null, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the ``data_device`` setting, :mod:`semiseg.data.device`)."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    text = value.strip().lower()
    return text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit())


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), " or ".join(repr(c) for c in choices)


SETTING_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_iterations": _int_at_least(1),
    "iterations_per_epoch": _int_at_least(1),
    "num_val": _int_at_least(0),
    "num_labelled": ((lambda v: v is None or (_is_int(v) and v >= 1)), "an integer >= 1 (or null: all labelled)"),
    "batch_size": _int_at_least(1),
    "num_samples": _int_at_least(1),
    "unlabelled_batch_size": _int_at_least(1),
    "val_interval": _int_at_least(1),
    "log_every": _int_at_least(1),
    "num_workers": _int_at_least(0),
    "seed": _int_at_least(0),
    "in_channels": _int_at_least(1),
    "num_classes": _int_at_least(2),
    "sw_batch_size": _int_at_least(1),
    "roi_size": (_roi, "three integers >= 1, e.g. [48, 48, 48]"),
    "learning_rate": _number(0.0, low_open=True),
    "momentum": _number(0.0, 1.0, high_open=True),
    "weight_decay": _number(0.0),
    "cache_rate": _number(0.0, 1.0),
    "overlap": (_overlap, "a number in [0, 1), or three of them (one per axis)"),
    "blend_mode": _one_of("gaussian", "constant"),
    "intensity_norm": _one_of("percentile", "zscore", "none"),
    "label_crop": _one_of("balanced", "uniform"),
    "rot90": (is_flag, _FLAG),
    "ema_decay": _number(0.0, 1.0),
    "consistency": _number(0.0),
    "consistency_rampup": _number(0.0),
    "nonfinite_voxels": ((lambda v: v in ("error", "replace")), "'error' or 'replace'"),
    "dropout": _number(0.0, 1.0, high_open=True),
    "num_threads": ((lambda v: v is None or (_is_int(v) and v >= 1)), "an integer >= 1 (or null: chosen at start)"),
    "data_device": (_data_device, "null, 'cpu', 'cuda' or 'cuda:N'"),
    "progress": (
        (lambda v: v is None or is_flag(v) or (isinstance(v, str) and v.strip().lower() in AUTO_WORDS)),
        "true, false or auto (also 1/0, yes/no, any case; null: a bar only in a terminal)",
    ),
    **{name: (is_flag, _FLAG) for name in ("amp", "resume", "overwrite", "init_strict", "binarise_label")},
}
"""Each checked setting and ``(test, what it must be)``. A bundle's own tunables join by adding a rule here."""


def check_settings(**settings: Any) -> None:
    """Check bundle settings against :data:`SETTING_RULES`.

    Args:
        settings: ``name=value`` pairs, e.g. ``max_iterations=@max_iterations`` in a config expression.

    Raises:
        SettingError: one problem per value out of range, naming the setting and what it must be.
        ValueError: for a name without a rule (a mistake in the config that calls this).
    """
    unknown = sorted(set(settings) - set(SETTING_RULES))
    if unknown:
        raise ValueError(f"semiseg.bundle_checks has no rule for {unknown}; rules exist for {sorted(SETTING_RULES)}")
    problems = []
    for name, value in settings.items():
        ok, expected = SETTING_RULES[name]
        if not ok(value):
            problems.append(
                f"setting {name} must be {expected}, got {value!r} ({type(value).__name__}); set it with "
                f"--{name} <value> or in the config (nothing was run)."
            )
    roi, rot90 = settings.get("roi_size"), settings.get("rot90")
    if _roi(roi) and is_flag(rot90) and flag(rot90, "rot90") and roi[0] != roi[1]:
        problems.append(
            f"setting rot90 turns crops in the plane of their first two axes, which needs roi_size[0] == roi_size[1], "
            f"got roi_size {list(roi)}: pass --rot90 false or a crop with equal first two sides (nothing was run)."
        )
    device = settings.get("data_device")
    if _data_device(device) and isinstance(device, str) and device.strip().lower().startswith("cuda"):
        import torch  # MONAI's own dependency

        index = int(device.split(":")[1]) if ":" in device else 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            problems.append(
                f"setting data_device {device!r} needs a CUDA device, and torch sees "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 'none'}: leave data_device null to "
                "train with the default loaders (nothing was run)."
            )
    if problems:
        raise SettingError(problems)


def check_weights(model_file: str, workflow: str = "inference", network: Any = None) -> bool:
    """Fail in one line, before any input is read, when the weights a run loads are missing or cannot be loaded.

    A released zip made with ``scripts/package_bundles.py --allow-no-weights``, or a bundle folder never trained,
    has no ``models/model.pt``; an interrupted copy leaves an empty or truncated one; another bundle's weights, or
    weights trained for another class count, do not fit the network. Without this check MONAI's
    ``CheckpointLoader`` fails deep in the run, in a long traceback that names no file
    (:mod:`semiseg.checkpoint_files`).

    Args:
        model_file: the checkpoint the run loads (``@model_file``).
        workflow: what needs it, for the message.
        network: the network the run loads it into (``@network``); None checks only that the file is readable.

    Returns:
        True (a value for the ``initialize`` list).

    Raises:
        SettingError: naming the missing file and how to get weights.
        CheckpointFileError: naming the file and what is wrong with it (empty, truncated or corrupt, pickled
            objects, tensors that do not fit ``network``).
    """
    if not (isinstance(model_file, str) and os.path.isfile(model_file)):
        path = os.path.abspath(str(model_file))
        raise SettingError(
            f"no trained weights: checkpoint {path} does not exist: train the bundle first, or pass --ckpt_dir with "
            f"the folder holding {os.path.basename(path)} (or --model_file PATH); {workflow} needs trained weights. "
            "`make demo` trains every bundle; a released zip ships models/model.pt unless it was packaged with "
            "--allow-no-weights (nothing was run)."
        )
    checkpoint = read_checkpoint(model_file, f"{workflow} weights file")
    if network is not None:
        problem = state_dict_problem(state_dict_of(checkpoint), network, model_file)
        if problem is not None:
            raise CheckpointFileError(f"{workflow}: {problem} (nothing was run)")
    return True


_PROBE_MULTIPLES = (2, 4, 8, 16, 32, 64)


class _Probe:
    """Forward passes of one network at given input sizes: on a copy on PyTorch's ``meta`` device (shapes only, no
    arithmetic, no memory for activations, no random numbers drawn), made once; a failure there can be confirmed by
    a real pass on a CPU copy, so an operation the ``meta`` device lacks never refuses a size that works."""

    def __init__(self, network: torch.nn.Module, in_channels: int) -> None:
        self.network, self.in_channels = network, int(in_channels)
        self._meta: torch.nn.Module | None = None

    def _run(self, module: torch.nn.Module, size: Sequence[int], device: str) -> BaseException | None:
        try:
            with torch.no_grad():
                module(torch.zeros((1, self.in_channels, *size), device=device))
        except Exception as err:  # noqa: BLE001  (any failure of the forward pass is the answer)
            return err
        return None

    def problem(self, size: Sequence[int], confirm: bool = False) -> str | None:
        """Why the network cannot take a ``(1, in_channels, *size)`` input, or None when it can (or when that cannot
        be told: a network whose forward pass needs real data is never refused for it).

        Args:
            size: the spatial size.
            confirm: confirm a failure on the ``meta`` device by a pass on the CPU (without it, as for the hints of
                :func:`_input_rule`, the ``meta`` pass decides alone).
        """
        if self._meta is None:
            self._meta = copy.deepcopy(self.network).to("meta").eval()
        err = self._run(self._meta, size, "meta")
        if err is not None and confirm:
            err = self._run(copy.deepcopy(self.network).cpu().eval(), size, "cpu")
        if err is None:
            return None
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return f"{lines[0][:150] if lines else type(err).__name__} ({type(err).__name__})"


def _input_rule(probe: _Probe) -> tuple[int, int | None] | None:
    """``(multiple, smallest)``: the multiple every side of the input must be, and the smallest side that works.

    The multiple is the network's own ``size_divisor`` attribute when it declares one, else the smallest power of
    two ``k`` for which a ``64 + k`` input passes (a large size, so that only divisibility is tested); the smallest
    side is the first multiple that passes. None when no power of two up to 64 works.
    """
    declared = getattr(probe.network, "size_divisor", None)
    if _is_int(declared) and declared >= 1:
        multiple = int(declared)
    else:
        multiple = next((k for k in _PROBE_MULTIPLES if probe.problem([64 + k] * 3) is None), None)
        if multiple is None:
            return None
    smallest = next((n * multiple for n in range(1, 9) if probe.problem([n * multiple] * 3) is None), None)
    return multiple, smallest


def check_network_input(network: Any, roi_size: Sequence[int], in_channels: int = 1) -> bool:
    """Fail in one line, before any work, when the network cannot take a ``roi_size`` input.

    Training crops, validation and inference windows are all ``roi_size``; a size the network cannot take (not
    divisible by its downsampling, or too small) would otherwise fail at the first iteration or deep in inference.
    What the network needs is asked of the network itself: one forward pass at ``roi_size`` on the ``meta``
    device (shapes only; see :class:`_Probe`), so a new network needs no entry in a table. The message
    says which multiple the sides must be, and the smallest side (:func:`_input_rule`: the network's own
    ``size_divisor`` attribute when it has one, else the smallest power of two the forward pass accepts).

    Args:
        network: the bundle's network (``@network_def``); None skips the check.
        roi_size: the bundle setting ``roi_size`` (checked by :func:`check_settings` first).
        in_channels: the bundle setting ``in_channels``.

    Returns:
        True (a value for the ``initialize`` list).

    Raises:
        SettingError: naming ``roi_size``, the network, why its forward pass fails and sizes that work.
    """
    if network is None:
        return True
    size = [int(s) for s in roi_size]
    probe = _Probe(network, int(in_channels))
    problem = probe.problem(size, confirm=True)
    if problem is None:
        return True
    name = type(network).__name__
    rule = _input_rule(probe)
    if rule is None:
        hint = "choose another roi_size"
    else:
        multiple, smallest = rule
        low = smallest or multiple
        up = [max(low, -(-s // multiple) * multiple) for s in size]
        down = [max(low, s // multiple * multiple) for s in size]
        options = [o for o in (down, up) if probe.problem(o) is None]
        shown = " or ".join(f'--roi_size "{o}"' for o in dict.fromkeys(map(str, options)))
        at_least = f", at least {smallest}," if smallest is not None and smallest > multiple else ""
        hint = f"each side must be a multiple of {multiple}{at_least} for {name}" + (f": e.g. {shown}" if shown else "")
    raise SettingError(
        f"setting roi_size {size} does not fit the network: {name} fails on a {'x'.join(map(str, size))} input "
        f"({problem}); {hint} (nothing was run)."
    )


def check_run(**settings: Any) -> bool:
    """What a workflow's first ``initialize`` expression calls: :func:`check_overrides` on the command line's
    overrides (only when the process is ``python -m monai.bundle run``), then :func:`check_settings`.

    Args:
        settings: as for :func:`check_settings`.

    Returns:
        True (a value for the ``initialize`` list).

    Raises:
        SettingError: for an unknown override or a setting out of range.
    """
    cli = cli_run_args()
    if cli is not None and cli.config_file is not None and cli.overrides:
        check_overrides(cli.config_file, cli.overrides, cli.tracking, from_command_line=True)
    check_settings(**settings)
    return True
