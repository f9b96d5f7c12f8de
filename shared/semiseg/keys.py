"""Names shared between the trainer, handlers and methods: state keys, events and who provides which state."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TypeVar

from ignite.engine import EventEnum

__all__ = [
    "SSLKeys",
    "SSLIterationEvents",
    "SSLRunEvents",
    "register_state_provider",
    "provides_state",
    "state_providers",
    "missing_state_hint",
]

_T = TypeVar("_T", bound=type)


class SSLKeys(str, Enum):
    """Keys of ``engine.state`` attributes and ``engine.state.output`` entries written by semiseg.

    ``engine.state`` attributes (set by handlers, read by methods):
        TEACHER: the EMA teacher network (:class:`semiseg.handlers.EMATeacher`).
        CONSISTENCY_WEIGHT: the current consistency weight (:class:`semiseg.handlers.ConsistencyRampUp`).
        UNCERTAINTY_THRESHOLD: UA-MT's uncertainty threshold as a fraction of the maximum entropy ``ln C``
            (:class:`semiseg.handlers.RampScheduler`, read by :class:`semiseg.methods.UAMTMethod`).

    ``engine.state.output`` entries (written by the trainer from the method's outputs):
        SUPERVISED_LOSS, UNSUPERVISED_LOSS: the two loss terms, detached, for logging.
    """

    TEACHER = "teacher"
    CONSISTENCY_WEIGHT = "consistency_weight"
    UNCERTAINTY_THRESHOLD = "uncertainty_threshold"
    SUPERVISED_LOSS = "sup_loss"
    UNSUPERVISED_LOSS = "unsup_loss"

    def __str__(self) -> str:
        return self.value


class SSLIterationEvents(EventEnum):
    """Events fired during semi-supervised training in addition to MONAI's ``IterationEvents``.

    TEACHER_UPDATED: an EMA teacher was updated (fired by :class:`semiseg.handlers.EMATeacher`).
    SECOND_PHASE_COMPLETED: the second update phase of a method with its own second optimiser (a discriminator,
        for instance) stepped that optimiser (fired by :class:`semiseg.engines.SemiSupervisedTrainer`, before
        MONAI's ``MODEL_COMPLETED``).
    """

    TEACHER_UPDATED = "teacher_updated"
    SECOND_PHASE_COMPLETED = "second_phase_completed"


class SSLRunEvents(EventEnum):
    """Events of a whole training run, fired by :class:`semiseg.engines.SemiSupervisedTrainer`.

    RUN_ENDED: the run ended, completed or stopped by an error (fired after Ignite's ``COMPLETED`` or
        ``EXCEPTION_RAISED`` handlers, before the error propagates); what a run holds until it ends, such as the
        lock of its ``ckpt_dir`` (:class:`semiseg.handlers.CheckpointDirGuard`), is released here. A handler must
        not raise.
    """

    RUN_ENDED = "run_ended"


# engine.state attribute -> the handlers (dotted names or short descriptions) that set it, first registered first
_STATE_PROVIDERS: dict[str, list[str]] = {}


def register_state_provider(key: str, provider: str) -> None:
    """Record that ``provider`` sets ``engine.state.<key>``, for the error a method raises when it is missing.

    Registering the same pair twice is a no-op; a second provider of the same key is listed after the first.

    Args:
        key: the ``engine.state`` attribute (an :class:`SSLKeys` member or a plain name).
        provider: how a config adds the provider, e.g. ``"semiseg.handlers.EMATeacher"``.

    Raises:
        ValueError: if ``key`` or ``provider`` is empty.
    """
    key, provider = str(key), str(provider)
    if not key or not provider:
        raise ValueError(f"state key and provider must be non-empty, got key={key!r}, provider={provider!r}.")
    providers = _STATE_PROVIDERS.setdefault(key, [])
    if provider not in providers:
        providers.append(provider)


def provides_state(*keys: str, name: str | None = None) -> Callable[[_T], _T]:
    """Class decorator: register the decorated handler class as the provider of ``engine.state.<key>`` for ``keys``.

    Args:
        keys: the ``engine.state`` attributes the handler sets.
        name: the name a config uses for the class; default ``<module>.<qualname>``.

    Returns:
        The decorator, which returns the class unchanged.
    """

    def decorator(cls: _T) -> _T:
        for key in keys:
            register_state_provider(key, name or f"{cls.__module__}.{cls.__qualname__}")
        return cls

    return decorator


def state_providers(key: str) -> tuple[str, ...]:
    """The registered providers of ``engine.state.<key>``, in registration order (empty if none)."""
    return tuple(_STATE_PROVIDERS.get(str(key), ()))


def missing_state_hint(key: str) -> str:
    """What to add to a config when ``engine.state.<key>`` is missing, built from the provider registry.

    Args:
        key: the missing ``engine.state`` attribute.

    Returns:
        E.g. ``"add semiseg.handlers.EMATeacher (sets engine.state.teacher) to train#handlers"``; for a key nobody
        registered, a pointer to :class:`semiseg.handlers.RampScheduler`, the generic provider of ramped values.
    """
    key = str(key)
    providers = state_providers(key)
    if providers:
        return f"add {' or '.join(providers)} (sets engine.state.{key}) to train#handlers"
    return (
        f"add a handler that sets engine.state.{key} to train#handlers (for a ramped value: "
        f"semiseg.handlers.RampScheduler(param_name={key!r}, ...))"
    )
