"""ConsistencyRampUp: engine.state.consistency_weight = w * sigmoid_rampup(iter // every, length) (DESIGN.md §2-3)."""

from __future__ import annotations

import pytest
from ignite.engine import Engine, Events

from semiseg.handlers import ConsistencyRampUp, RampScheduler
from semiseg.ramps import sigmoid_rampup


def _run(handler: ConsistencyRampUp, iterations: int, epoch_length: int | None = None) -> list[float]:
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.consistency_weight))
    engine.run(range(epoch_length or iterations), max_epochs=iterations // (epoch_length or iterations))
    return seen


def test_handler_values_equal_the_pure_function() -> None:
    seen = _run(ConsistencyRampUp(weight=0.1, length=4, every=3), 15)
    expected = [0.1 * sigmoid_rampup(i // 3, 4) for i in range(15)]
    assert seen == pytest.approx(expected)
    assert seen[0] == pytest.approx(0.1 * 0.006737946999085467)  # 0.1 * exp(-5)
    assert seen[12] == pytest.approx(0.1)


def test_reference_defaults_are_ssl4mis() -> None:
    handler = ConsistencyRampUp()
    assert (handler.end, handler.length, handler.every, handler.unit) == (0.1, 40.0, 150, "iteration")
    # iteration 150 * 10 = 1500 -> t = 10
    assert handler.value_at(1500 // 150) == pytest.approx(0.1 * sigmoid_rampup(10, 40))


def test_epoch_unit() -> None:
    seen = _run(ConsistencyRampUp(weight=1.0, length=2, unit="epoch", every=1), 6, epoch_length=2)
    assert seen == pytest.approx([sigmoid_rampup(0, 2)] * 2 + [sigmoid_rampup(1, 2)] * 2 + [1.0] * 2)


def test_value_follows_engine_iteration_after_resume() -> None:
    handler = ConsistencyRampUp(weight=1.0, length=10, every=1)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.iteration = 7  # as restored from a checkpoint
    engine.state.iteration += 1
    handler(engine)
    assert engine.state.consistency_weight == pytest.approx(sigmoid_rampup(7, 10))


def test_simulate_values() -> None:
    values = ConsistencyRampUp.simulate_values(4, weight=1.0, length=2, every=2)
    assert [v for _, v in values] == pytest.approx(
        [sigmoid_rampup(0, 2), sigmoid_rampup(0, 2), sigmoid_rampup(1, 2), sigmoid_rampup(1, 2)]
    )
    assert [i for i, _ in values] == [0, 1, 2, 3]


def test_uamt_threshold_schedule_as_ramp() -> None:
    # UA-MT: (0.75 + 0.25 * sigmoid_rampup(iter, max_iter)) * ln 2, DESIGN.md §3
    import math

    sched = RampScheduler("uncertainty_threshold", 0.75 * math.log(2), math.log(2), length=100)
    assert sched.value_at(100) == pytest.approx(math.log(2))
    assert sched.value_at(0) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))


def test_state_dict_roundtrip_and_bad_arguments() -> None:
    a = ConsistencyRampUp(weight=0.3, length=7, every=5)
    b = ConsistencyRampUp()
    b.load_state_dict(a.state_dict())
    assert (b.end, b.length, b.every) == (0.3, 7.0, 5)
    with pytest.raises(ValueError, match="ramp"):
        ConsistencyRampUp(ramp="step")
    with pytest.raises(ValueError, match="unit"):
        ConsistencyRampUp(unit="minute")
