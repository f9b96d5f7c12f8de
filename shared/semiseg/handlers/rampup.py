"""Ramped values written to ``engine.state`` (consistency weight, UA-MT threshold, ...)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers.state_param_scheduler import StateParamScheduler

from semiseg import ramps
from semiseg.handlers.budget import run_budget
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

    A ramp whose length is a fraction of the run follows the budget the run actually trains
    (:func:`semiseg.handlers.budget.run_budget`, ``max_epochs x epoch_length`` iterations or ``max_epochs``
    epochs, read at every event, so ``--max_iterations``, MONAI Label's ``train#trainer#max_epochs`` and a resume
    with a larger budget all stretch it): ``run_steps`` sets ``every = max(1, budget // run_steps)`` (SSL4MIS's
    ``iter // 150`` with 200 steps over 30000 iterations, UA-MT's with 40 over 6000), ``length_fraction`` sets
    ``length = fraction x budget`` (UA-MT's ``sigmoid_rampup(iter, max_iter)``: 1.0), ``offset_fraction`` sets
    ``offset = floor(fraction x budget)`` (BPL's warm-up from 0.4 T). A run too short for ``run_steps`` whole
    steps (``n = budget - offset`` units of the ramp, ``n <= run_steps``) has the steps rescaled to it:
    ``t = (index - offset) * run_steps // (n - 1)``, so ``t`` reaches ``run_steps`` at the run's last unit and a
    ramp with ``length = run_steps`` ends at ``end`` there (a 10-iteration MONAI Label run ends at the full
    consistency weight; one step per unit would stop at ``sigmoid_rampup(9, 40)``, 5% of it); at
    ``n = run_steps + 1`` both rules give ``t = index - offset``. The resolved ``every`` / ``length`` / ``offset``
    / ``span`` (``n - 1`` when the steps are rescaled, else ``None``) are what :meth:`state_dict` holds.

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
        offset: units before the ramp starts (BPL's warm-up, UGPCL's contrastive loss from 10% of the run); the value
            is ``start`` until then.
        run_steps: when set, ``every`` is ``max(1, budget // run_steps)`` (the ramp's ``t`` takes ``run_steps``
            steps over the run) instead of the ``every`` given; a run of no more ramp units than ``run_steps``
            has its steps rescaled to it (above).
        length_fraction: when set, ``length`` is this fraction of the budget.
        offset_fraction: when set, ``offset`` is ``floor(offset_fraction x budget)``.

    Raises:
        ValueError: on an unknown ramp or unit, ``every < 1``, a negative ``offset``, ``run_steps < 1`` or a
            fraction that is not > 0 (``offset_fraction``: >= 0).
    """

    _budget_attrs = ("run_steps", "length_fraction", "offset_fraction", "span")

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
        run_steps: int | None = None,
        length_fraction: float | None = None,
        offset_fraction: float | None = None,
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
        if run_steps is not None and (int(run_steps) != run_steps or int(run_steps) < 1):
            raise ValueError(f"run_steps must be an integer >= 1 or None, got {run_steps!r}.")
        if length_fraction is not None and not float(length_fraction) > 0:
            raise ValueError(f"length_fraction must be > 0 or None, got {length_fraction!r}.")
        if offset_fraction is not None and not float(offset_fraction) >= 0:
            raise ValueError(f"offset_fraction must be >= 0 or None, got {offset_fraction!r}.")
        self.start, self.end, self.length = float(start), float(end), float(length)
        self.ramp, self.unit, self.every, self.offset = ramp, unit, int(every), int(offset)
        self.run_steps = None if run_steps is None else int(run_steps)
        self.length_fraction = None if length_fraction is None else float(length_fraction)
        self.offset_fraction = None if offset_fraction is None else float(offset_fraction)
        self.span: int | None = None
        self._state_attrs += ["start", "end", "length", "ramp", "unit", "every", "offset", *self._budget_attrs]
        if not state_providers(param_name):
            register_state_provider(param_name, f"semiseg.handlers.RampScheduler(param_name={param_name!r}, ...)")

    def fit(self, budget: int) -> None:
        """Resolve ``every`` / ``length`` / ``offset`` / ``span`` from ``budget`` (counted in ``unit``)."""
        if budget < 1:
            return
        if self.length_fraction is not None:
            self.length = self.length_fraction * budget
        if self.offset_fraction is not None:
            self.offset = math.floor(self.offset_fraction * budget + 1e-9)
        if self.run_steps is not None:
            units = budget - self.offset  # the ramp's units: indices offset .. budget - 1
            self.every = max(1, budget // self.run_steps)
            self.span = max(units - 1, 0) if units <= self.run_steps else None

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Ignite's ``load_state_dict``; a state saved before ``run_steps``, the fractions and ``span`` existed keeps
        the configured ones."""
        missing = {name: getattr(self, name) for name in self._budget_attrs if name not in state_dict}
        super().load_state_dict({**state_dict, **missing})

    def value_at(self, t: float) -> float:
        """The value at ramp position ``t`` (already divided by ``every`` and counted from ``offset``)."""
        return self.start + (self.end - self.start) * RAMPS[self.ramp](t, self.length)

    def position(self, index: int) -> int:
        """The ramp's ``t`` after ``index`` completed units (``index >= offset``): ``(index - offset) // every``, or
        ``(index - offset) * run_steps // span`` when a short run rescales the steps (``span`` set; a run of one
        unit stays at ``t = 0``)."""
        units = index - self.offset
        if self.span is None or self.run_steps is None:
            return units // self.every
        return units * self.run_steps // self.span if self.span else 0

    def value_at_index(self, index: int) -> float:
        """The value after ``index`` completed units: ``start`` before ``offset``, else the ramp's value."""
        if index < self.offset:
            return self.start
        return self.value_at(self.position(index))

    def get_param(self) -> float:
        """The value for the current event (``event_index`` is 1 for the first iteration/epoch)."""
        return self.value_at_index(self.event_index - 1)

    def attach(self, engine: Engine, event: Any = None) -> None:  # type: ignore[override]
        """Register on ``ITERATION_STARTED`` or ``EPOCH_STARTED`` by ``unit`` (idempotent)."""
        if engine.has_event_handler(self):
            return
        if hasattr(engine.state, self.param_name):
            raise ValueError(f"engine.state.{self.param_name} is already set by another handler.")
        self.fit(run_budget(engine, self.unit))
        setattr(engine.state, self.param_name, self.value_at_index(0))
        if self.save_history:
            if getattr(engine.state, "param_history", None) is None:
                engine.state.param_history = {}
            engine.state.param_history.setdefault(self.param_name, [])
        event = Events.ITERATION_STARTED if self.unit == "iteration" else Events.EPOCH_STARTED
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        """Fit to the run's budget, sync the position from the engine (robust to resume) and write the value."""
        self.fit(run_budget(engine, self.unit))
        self.event_index = (engine.state.iteration if self.unit == "iteration" else engine.state.epoch) - 1
        super().__call__(engine)

    @classmethod
    def simulate_values(cls, num_events: int, **scheduler_kwargs: Any) -> list[list[float]]:
        """Values for events ``0..num_events-1`` without an engine (a run of ``num_events`` units):
        ``[[event, value], ...]``."""
        scheduler = cls(**scheduler_kwargs)
        scheduler.fit(num_events)
        return [[i, scheduler.value_at_index(i)] for i in range(num_events)]


@provides_state(SSLKeys.CONSISTENCY_WEIGHT, name="semiseg.handlers.ConsistencyRampUp")
class ConsistencyRampUp(RampScheduler):
    """``engine.state.consistency_weight = weight * sigmoid_rampup(t, length)``.

    Defaults are UA-MT's LA setup: ``0.1 * sigmoid_rampup(iter // 150, 40)``, 40 steps of 150 over its 6000
    iterations (SSL4MIS's 3D scripts: ``length=200`` over 30000; docs/architecture.md §3; Laine & Aila 2017 ramp).
    UGPCL uses ``every=100``. Methods read ``engine.state.consistency_weight``.

    Args:
        weight: the maximum weight (``consistency`` in the reference code).
        length: ramp length in steps of ``t`` (``consistency_rampup``).
        unit: ``"iteration"`` or ``"epoch"``.
        every: units per step of ``t``.
        ramp: the ramp shape.
        save_history: see :class:`RampScheduler`.
        offset: units before the ramp starts; the weight is 0 until then (see :class:`RampScheduler`).
        run_steps: ``every = max(1, budget // run_steps)`` for the run's budget (SSL4MIS: ``run_steps=length``,
            so the ramp spans the run whatever its length; a run of ``run_steps`` iterations or fewer has the steps
            rescaled to it and ends at ``weight``, see :class:`RampScheduler`); replaces ``every``.
        length_fraction: ``length`` as a fraction of the budget (see :class:`RampScheduler`).
        offset_fraction: ``offset`` as a fraction of the budget (see :class:`RampScheduler`).
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
        run_steps: int | None = None,
        length_fraction: float | None = None,
        offset_fraction: float | None = None,
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
            run_steps=run_steps,
            length_fraction=length_fraction,
            offset_fraction=offset_fraction,
        )
