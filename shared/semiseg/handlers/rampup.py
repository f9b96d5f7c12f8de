"""Ramped values written to ``engine.state`` (consistency weight, UA-MT threshold, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers.state_param_scheduler import StateParamScheduler

from semiseg import ramps
from semiseg.keys import SSLKeys, provides_state, register_state_provider, state_providers

__all__ = ["RampScheduler", "ConsistencyRampUp", "RAMPS"]

RAMPS: dict[str, Callable[[float, float], float]] = {
    "sigmoid": ramps.sigmoid_rampup,
    "linear": ramps.linear_rampup,
    "cosine_rampdown": ramps.cosine_rampdown,
}


class RampScheduler(StateParamScheduler):
    """Write ``start + (end - start) * ramp(t, length)`` to ``engine.state.<param_name>``.

    ``t`` is counted from the engine itself, never from a private counter, so a resumed run (whose engine
    iteration/epoch is restored from the checkpoint) continues on the same curve. With ``index = iteration - 1``
    for ``unit="iteration"`` (the value of an iteration uses the iterations completed before it, like the reference
    code's ``iter_num``) or ``index = epoch - 1`` for ``unit="epoch"``, the value is ``start`` while
    ``index < offset`` (the ramp is not active yet) and follows the ramp at ``t = (index - offset) // every`` from
    then on. The value is set at ``ITERATION_STARTED`` (``EPOCH_STARTED``) so the method sees it in the same
    iteration (epoch).

    Every instance registers itself as the provider of ``engine.state.<param_name>`` (unless a handler class
    already provides that key, :func:`semiseg.keys.register_state_provider`), so a method that lists
    ``param_name`` in ``required_state`` names this handler when it is missing.

    Args:
        param_name: the ``engine.state`` attribute to write.
        start: value at ``t = 0`` of the ramp factor 0.
        end: value when the ramp factor is 1.
        length: ramp length in units of ``t``.
        ramp: ``"sigmoid"``, ``"linear"`` or ``"cosine_rampdown"`` (see :mod:`semiseg.ramps`).
        unit: ``"iteration"`` or ``"epoch"``.
        every: how many units make one step of ``t`` (SSL4MIS: 150 iterations; UGPCL: 100).
        save_history: keep the values in ``engine.state.param_history`` (Ignite ``StateParamScheduler``).
        offset: units before the ramp starts (BPL's warm-up, UGPCL's contrastive loss from step 1000); the value
            is ``start`` until then.

    Raises:
        ValueError: on an unknown ramp or unit, ``every < 1`` or a negative ``offset``.
    """

    def __init__(
        self,
        param_name: str,
        start: float,
        end: float,
        length: float,
        ramp: str = "sigmoid",
        unit: str = "iteration",
        every: int = 1,
        save_history: bool = False,
        offset: int = 0,
    ) -> None:
        super().__init__(param_name=param_name, save_history=save_history, create_new=True)
        if ramp not in RAMPS:
            raise ValueError(f"ramp must be one of {sorted(RAMPS)}, got {ramp!r}.")
        if unit not in ("iteration", "epoch"):
            raise ValueError(f"unit must be 'iteration' or 'epoch', got {unit!r}.")
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every!r}.")
        if int(offset) != offset or int(offset) < 0:
            raise ValueError(f"offset must be an integer >= 0, got {offset!r}.")
        self.start, self.end, self.length = float(start), float(end), float(length)
        self.ramp, self.unit, self.every, self.offset = ramp, unit, int(every), int(offset)
        self._state_attrs += ["start", "end", "length", "ramp", "unit", "every", "offset"]
        if not state_providers(param_name):
            register_state_provider(param_name, f"semiseg.handlers.RampScheduler(param_name={param_name!r}, ...)")

    def value_at(self, t: float) -> float:
        """The value at ramp position ``t`` (already divided by ``every`` and counted from ``offset``)."""
        return self.start + (self.end - self.start) * RAMPS[self.ramp](t, self.length)

    def value_at_index(self, index: int) -> float:
        """The value after ``index`` completed units: ``start`` before ``offset``, else the ramp's value."""
        if index < self.offset:
            return self.start
        return self.value_at((index - self.offset) // self.every)

    def get_param(self) -> float:
        """The value for the current event (``event_index`` is 1 for the first iteration/epoch)."""
        return self.value_at_index(self.event_index - 1)

    def attach(self, engine: Engine, event: Any = None) -> None:  # type: ignore[override]
        """Register on ``ITERATION_STARTED`` or ``EPOCH_STARTED`` by ``unit`` (idempotent)."""
        if engine.has_event_handler(self):
            return
        if hasattr(engine.state, self.param_name):
            raise ValueError(f"engine.state.{self.param_name} is already set by another handler.")
        setattr(engine.state, self.param_name, self.value_at_index(0))
        if self.save_history:
            if getattr(engine.state, "param_history", None) is None:
                engine.state.param_history = {}
            engine.state.param_history.setdefault(self.param_name, [])
        event = Events.ITERATION_STARTED if self.unit == "iteration" else Events.EPOCH_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        """Sync the position from the engine (robust to resume) and write the value."""
        self.event_index = (engine.state.iteration if self.unit == "iteration" else engine.state.epoch) - 1
        super().__call__(engine)

    @classmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[float]]:
        """Values for events ``0..num_events-1`` without an engine: ``[[event, value], ...]``."""
        scheduler = cls(**scheduler_kwargs)
        return [[i, scheduler.value_at_index(i)] for i in range(num_events)]


@provides_state(SSLKeys.CONSISTENCY_WEIGHT, name="semiseg.handlers.ConsistencyRampUp")
class ConsistencyRampUp(RampScheduler):
    """``engine.state.consistency_weight = weight * sigmoid_rampup(t, length)``.

    Defaults are the SSL4MIS / UA-MT 3D setup: ``0.1 * sigmoid_rampup(iter // 150, 40)`` (docs/architecture.md §3;
    Laine & Aila 2017 ramp). UGPCL uses ``every=100``. Methods read ``engine.state.consistency_weight``.

    Args:
        weight: the maximum weight (``consistency`` in the reference code).
        length: ramp length in steps of ``t`` (``consistency_rampup``).
        unit: ``"iteration"`` or ``"epoch"``.
        every: units per step of ``t``.
        ramp: the ramp shape.
        save_history: see :class:`RampScheduler`.
        offset: units before the ramp starts; the weight is 0 until then (see :class:`RampScheduler`).
    """

    def __init__(
        self,
        weight: float = 0.1,
        length: float = 40.0,
        unit: str = "iteration",
        every: int = 150,
        ramp: str = "sigmoid",
        save_history: bool = False,
        offset: int = 0,
    ) -> None:
        super().__init__(
            param_name=SSLKeys.CONSISTENCY_WEIGHT.value,
            start=0.0,
            end=weight,
            length=length,
            ramp=ramp,
            unit=unit,
            every=every,
            save_history=save_history,
            offset=offset,
        )
