"""Names shared between the trainer, handlers and methods: state keys and events, never free strings."""

from __future__ import annotations

from enum import Enum

from ignite.engine import EventEnum

__all__ = ["SSLKeys", "SSLIterationEvents"]


class SSLKeys(str, Enum):
    """Keys of ``engine.state`` attributes and ``engine.state.output`` entries written by semiseg.

    ``engine.state`` attributes (set by handlers, read by methods):
        TEACHER: the EMA teacher network (:class:`semiseg.handlers.EMATeacher`).
        CONSISTENCY_WEIGHT: the current consistency weight (:class:`semiseg.handlers.ConsistencyRampUp`).

    ``engine.state.output`` entries (written by the trainer from the method's outputs):
        SUPERVISED_LOSS, UNSUPERVISED_LOSS: the two loss terms, detached, for logging.
    """

    TEACHER = "teacher"
    CONSISTENCY_WEIGHT = "consistency_weight"
    SUPERVISED_LOSS = "sup_loss"
    UNSUPERVISED_LOSS = "unsup_loss"

    def __str__(self) -> str:
        return self.value


class SSLIterationEvents(EventEnum):
    """Events fired during semi-supervised training in addition to MONAI's ``IterationEvents``.

    TEACHER_UPDATED: an EMA teacher was updated (fired by :class:`semiseg.handlers.EMATeacher`).
    """

    TEACHER_UPDATED = "teacher_updated"
