"""HTTP answers for the app's errors: a 4xx status with the one-line ``semiseg: error:`` message, not a bare 500.

MONAI Label's endpoints turn any exception of the app into ``500 Internal Server Error``; the message stays in the
server log. The app's request methods (``infer``, ``next_sample``, ``bundle_path``) run inside :func:`answered`,
which raises FastAPI's ``HTTPException`` instead, whose ``detail`` (the JSON body's ``"detail"``) is the message:

- 404: an unknown image id, model (bundle) or strategy (:class:`NotFound`), or a file that does not exist
  (``FileNotFoundError`` raised by semiseg);
- 409: a bundle without trained weights (:class:`NoWeights`);
- 422: a bad parameter: :class:`BadParameter`, any other ``semiseg: error:`` error
  (:class:`semiseg.errors.SemisegError`, ``SettingError``, a ``ValueError`` raised by semiseg code, e.g. a measure
  the bundle's inference does not write), or MONAI Label's own ``INVALID_INPUT``.

Anything else (a bug) stays a 500, with its traceback in the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException
from monailabel.interfaces.exception import (
    ImageNotFoundException,
    LabelNotFoundException,
    MONAILabelError,
    MONAILabelException,
)

from semiseg.errors import SemisegError, user_error

logger = logging.getLogger(__name__)

PREFIX = "semiseg: error: "


class RequestError(SemisegError):
    """An error in a request, answered with :attr:`status` (raise a subclass)."""

    status: int = 422


class NotFound(RequestError):
    """An unknown image id, model (bundle) or strategy: 404."""

    status = 404


class NoWeights(RequestError):
    """A bundle that has no trained weights yet: 409."""

    status = 409


class BadParameter(RequestError, ValueError):
    """A request parameter of the wrong type or out of range: 422."""

    status = 422


def http_error(exc: BaseException) -> HTTPException | None:
    """The ``HTTPException`` that answers ``exc`` (module docstring), or None to leave it a 500.

    Args:
        exc: what the app's request method raised.

    Returns:
        The answer, its ``detail`` one ``semiseg: error:`` message; None for an error that is not the request's.
    """
    if isinstance(exc, HTTPException):
        return exc
    found = user_error(exc)
    if found is not None:
        if isinstance(found, RequestError):
            status = found.status
        else:
            status = 404 if isinstance(found, FileNotFoundError) else 422
        return HTTPException(status_code=status, detail=PREFIX + (str(found).strip() or type(found).__name__))
    if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)):
        return HTTPException(status_code=404, detail=PREFIX + str(exc.msg))
    if isinstance(exc, MONAILabelException) and exc.error == MONAILabelError.INVALID_INPUT:
        return HTTPException(status_code=422, detail=PREFIX + str(exc.msg))
    return None


@contextmanager
def answered(what: str) -> Iterator[None]:
    """Run a request method; a request's error leaves it as an ``HTTPException`` (:func:`http_error`), logged in
    one line.

    Args:
        what: the request, for the log (``"POST /infer/mean_teacher"``).
    """
    try:
        yield
    except HTTPException:
        raise
    except Exception as exc:
        answer = http_error(exc)
        if answer is None:
            raise
        logger.warning(f"{what}: HTTP {answer.status_code}: {answer.detail}")
        raise answer from exc
