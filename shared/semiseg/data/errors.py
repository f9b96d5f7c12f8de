"""The one exception the data layer raises: :class:`DataValidationError`."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["DataValidationError"]


class DataValidationError(ValueError):
    """A data set, data list or volume file is unusable; the message names the file and the problem.

    Every problem found by :mod:`semiseg.data` (missing or unreadable files, wrong shapes, label values outside the
    class range, a dataset directory in no known layout, an impossible labelled/unlabelled split) is raised as this
    error, chained (``raise ... from err``) to the library error that revealed it, if any.

    Args:
        problems: one human-readable line per problem, each naming the offending file (full path) and what is wrong.
            A single string is one problem.

    Attributes:
        problems: the individual problem lines, in the order they were found.
    """

    max_listed: int = 20

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            raise ValueError("DataValidationError needs at least one problem description.")
        super().__init__(self._format(self.problems))

    @classmethod
    def _format(cls, problems: list[str]) -> str:
        if len(problems) == 1:
            return problems[0]
        listed = "\n".join(f"  - {p}" for p in problems[: cls.max_listed])
        more = len(problems) - cls.max_listed
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return f"{len(problems)} problems in the data:\n{listed}{tail}"
