"""The one reader of boolean bundle settings: ``--resume true``, ``--binarise_label false``, ``--amp 0``.

``python -m monai.bundle run`` parses its ``--id value`` arguments with Python Fire, which turns ``True`` into a
bool but passes ``true`` / ``false`` / ``yes`` / ``no`` on as strings; MONAI puts them into the config as they come,
and the string ``"false"`` is truthy, so a setting read as ``if @binarise_label`` would switch on when told to switch
off. Every boolean setting of a bundle config is therefore read through :func:`flag` where it is used::

    "binarise_label": "$semiseg.settings.flag(@binarise_label, 'binarise_label')"

and the tri-state ``progress`` (on, off, or only in a terminal) through :func:`flag_or_auto`. Both accept a real
bool, the integers 0 and 1, and the words ``true``/``false``, ``1``/``0``, ``yes``/``no`` in any case, and refuse
anything else in one line naming the setting (:class:`~semiseg.errors.SettingError`). The test suite checks that
every boolean of every bundle config is read this way (``tests/test_settings.py``), and
:func:`semiseg.bundle_checks.check_overrides` refuses a command-line string for a boolean that a MONAI component
takes directly (``--train#dataloader#shuffle false``), where no reader sits.

This module imports only the standard library (and :mod:`semiseg.errors` relatively), so it ships inside a bundle
zip (``scripts/package_bundles.py``) and inference reads its settings the same way with MONAI alone.
"""

from __future__ import annotations

from typing import Any

from .errors import SettingError

__all__ = ["AUTO_WORDS", "FALSE_WORDS", "TRUE_WORDS", "flag", "flag_or_auto", "is_flag"]

TRUE_WORDS = ("true", "1", "yes")
"""Strings read as True (any case, surrounding spaces ignored)."""
FALSE_WORDS = ("false", "0", "no")
"""Strings read as False (any case, surrounding spaces ignored)."""
AUTO_WORDS = ("auto",)
"""Strings :func:`flag_or_auto` reads as "decide at run time" (as ``None``)."""


def _parse(value: Any) -> bool | None:
    """``value`` as a bool, or None when it is not one of the accepted forms."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def is_flag(value: Any) -> bool:
    """Whether :func:`flag` accepts ``value``."""
    return _parse(value) is not None


def flag(value: Any, name: str) -> bool:
    """A boolean bundle setting as given in a config or on the command line.

    Args:
        value: the setting's value: a bool, 0 or 1, or ``true``/``false``/``1``/``0``/``yes``/``no`` in any case.
        name: the setting's id, for the error (``"binarise_label"``).

    Returns:
        The value as a bool.

    Raises:
        SettingError: for anything else, naming the setting and the value.
    """
    parsed = _parse(value)
    if parsed is None:
        raise SettingError(
            f"setting {name} must be true or false (also 1/0, yes/no, any case), got {value!r} "
            f"({type(value).__name__}); pass --{name} true or --{name} false (nothing was run)."
        )
    return parsed


def flag_or_auto(value: Any, name: str) -> bool | None:
    """A tri-state bundle setting: on, off, or ``None`` (null, ``"auto"``) for "decide at run time".

    Args:
        value: None, ``"auto"`` (any case), or anything :func:`flag` accepts.
        name: the setting's id, for the error (``"progress"``).

    Returns:
        None for null / ``"auto"``, else the value as a bool.

    Raises:
        SettingError: for anything else, naming the setting and the value.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() in AUTO_WORDS):
        return None
    parsed = _parse(value)
    if parsed is None:
        raise SettingError(
            f"setting {name} must be true, false or auto (also 1/0, yes/no, any case; null: auto), got {value!r} "
            f"({type(value).__name__}); pass --{name} true, false or auto (nothing was run)."
        )
    return parsed
