"""The one exception the data layer raises: :class:`DataValidationError`."""

from __future__ import annotations

from ..errors import SemisegError

__all__ = ["DataValidationError"]


class DataValidationError(SemisegError, ValueError):
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

    problems_header = "problems in the data"
    max_listed = 20
