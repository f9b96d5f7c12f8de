"""semiseg's user-facing errors and the one-line report a failed ``python -m monai.bundle run`` prints first.

A mistake in a bundle run (a misspelt setting, a bad data file, a NaN loss) is raised as an exception whose message
says what is wrong, which file or setting, and what to do. MONAI evaluates config expressions inside its own
``try``, so that message ends up at the bottom of a ~60-line traceback under "Failed to evaluate ConfigExpression".
Importing this module (``import semiseg`` does) installs :func:`excepthook`, which prints instead, as the first line
of the error report::

    semiseg: error: <the message> (SEMISEG_TRACEBACK=1 prints the traceback)

followed by the rest of a multi-line message, and the full traceback only when the environment variable
``SEMISEG_TRACEBACK=1`` is set. The process still exits with status 1.

Which exceptions are reported this way (:func:`user_error`): anywhere in the exception chain (``__cause__`` /
``__context__``, outermost first), a :class:`SemisegError`, or a ``ValueError`` (``DataValidationError`` included),
``FloatingPointError`` or ``OSError`` raised by semiseg code itself (the innermost traceback frame is in a semiseg
module), or an ``OSError`` of a full or read-only disk (``ENOSPC``, ``EDQUOT``, ``EROFS``) raised anywhere, say by
a library writing a segmentation: its message names the file. Everything else (bugs, library errors) gets Python's
usual traceback.

This module imports only the standard library, so it ships inside a bundle zip (``scripts/package_bundles.py``)
and the report works when inference runs with MONAI alone.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from types import TracebackType

__all__ = [
    "TRACEBACK_ENV",
    "SemisegError",
    "SettingError",
    "excepthook",
    "format_user_error",
    "install_excepthook",
    "user_error",
]

TRACEBACK_ENV = "SEMISEG_TRACEBACK"
"""Set to ``1`` to print the full traceback after the one-line report."""

_PACKAGE = "semiseg"  # also "scripts.semiseg.*" when shipped in a bundle zip
_REPORTED_TYPES = (ValueError, FloatingPointError, OSError)
_DISK_ERRNOS = frozenset(n for n in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS) if n is not None)
"""``OSError`` numbers reported in one line wherever they are raised: the disk, not a bug."""
_HINT = f"({TRACEBACK_ENV}=1 prints the traceback)"
_PREFIX = "semiseg: error: "


class SemisegError(Exception):
    """Base class of semiseg's errors meant for the person running a bundle.

    The message says what is wrong, which file or setting, and what to do. Several problems found together are
    given as a list and reported together (the first one on the report's first line).

    Args:
        problems: one line per problem, or a single string.

    Attributes:
        problems: the problem lines, in the order they were found.
    """

    problems_header: str = "problems"
    """Several problems are introduced as ``"<n> <problems_header>:"``."""
    max_listed: int | None = None
    """List at most this many problems in the message (all of them stay in :attr:`problems`); None lists all."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            raise ValueError(f"{type(self).__name__} needs at least one problem description.")
        super().__init__(self._format(self.problems))

    @classmethod
    def _format(cls, problems: list[str]) -> str:
        if len(problems) == 1:
            return problems[0]
        shown = problems if cls.max_listed is None else problems[: cls.max_listed]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"{len(problems)} {cls.problems_header}:\n" + "\n".join(f"  - {p}" for p in shown) + tail


class SettingError(SemisegError, ValueError):
    """A bundle setting (a config id or a ``--id value`` override) that is unknown or out of range."""


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first (cycles cut)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _raised_by_semiseg(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _PACKAGE in str(tb.tb_frame.f_globals.get("__name__", "")).split(".")


def _is_semiseg_error(exc: BaseException) -> bool:
    """An instance of this module's :class:`SemisegError`, or of a bundle zip's copy of it."""
    return any(
        cls.__name__ == SemisegError.__name__ and _PACKAGE in cls.__module__.split(".") for cls in type(exc).__mro__
    )


def user_error(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that :func:`excepthook` reports in one line, or None.

    Args:
        exc: the exception that ended the program (for a bundle run, usually MONAI's ``RuntimeError("Failed to
            evaluate ...")``).

    Returns:
        The outermost :class:`SemisegError`, ``ValueError``/``FloatingPointError``/``OSError`` raised by semiseg
        code, or ``OSError`` of a full or read-only disk, in the chain; None if there is none.
    """
    for item in _chain(exc):
        if _is_semiseg_error(item) or (isinstance(item, _REPORTED_TYPES) and _raised_by_semiseg(item)):
            return item
        if isinstance(item, OSError) and item.errno in _DISK_ERRNOS:
            return item
    return None


def format_user_error(exc: BaseException) -> str:
    """The report :func:`excepthook` prints for a user error (see :func:`user_error`), ending with a newline.

    The first line is ``semiseg: error: <first problem> (SEMISEG_TRACEBACK=1 prints the traceback)``; further
    problems (an error with a ``problems`` list) or further lines of the message follow, one a line.

    Args:
        exc: the error to report.

    Returns:
        The report.
    """
    problems = getattr(exc, "problems", None)
    if isinstance(problems, list) and len(problems) > 1 and all(isinstance(p, str) for p in problems):
        more = len(problems) - 1
        first = f"{problems[0]} (and {more} more problem{'s' if more > 1 else ''}, listed below)"
        rest = [f"  - {p}" for p in problems[1:]]
    else:
        lines = (str(exc).strip() or type(exc).__name__).splitlines()
        first, rest = lines[0], lines[1:]
    return "\n".join([f"{_PREFIX}{first} {_HINT}", *rest]) + "\n"


def excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None,
    fallback: Callable[[type[BaseException], BaseException, TracebackType | None], object] | None = None,
) -> None:
    """``sys.excepthook`` that reports semiseg's user errors in one line (see the module docstring).

    Args:
        exc_type: the exception type.
        exc: the exception.
        tb: its traceback.
        fallback: the hook for everything else (default: the hook installed before, or Python's).
    """
    fallback = fallback or _previous_hook
    found = user_error(exc) if isinstance(exc, Exception) else None
    if found is None:
        fallback(exc_type, exc, tb)
        return
    sys.stderr.write(format_user_error(found))
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        sys.stderr.write("\n")
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
    sys.stderr.flush()


_previous_hook: Callable[[type[BaseException], BaseException, TracebackType | None], object] = sys.__excepthook__


def install_excepthook() -> None:
    """Install :func:`excepthook` unless another program already replaced Python's default hook.

    Called when this module is imported; calling it again does nothing.
    """
    global _previous_hook
    current = sys.excepthook
    module = str(getattr(current, "__module__", ""))
    if getattr(current, "__name__", "") == excepthook.__name__ and _PACKAGE in module.split("."):
        return  # installed already (possibly by the bundle-zip copy of this module)
    if current is not sys.__excepthook__:
        return  # an IDE, IPython or the program itself has its own hook: leave it
    _previous_hook = current
    sys.excepthook = excepthook


install_excepthook()
