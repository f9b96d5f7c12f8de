"""ConsistencyRampUp / RampScheduler: engine.state.<param> = start + (end - start) * ramp((index - offset) // every).

Formulas: docs/architecture.md §2-3.
"""

from __future__ import annotations

import math

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
    # UA-MT: (0.75 + 0.25 * sigmoid_rampup(iter, max_iter)) * ln 2, docs/architecture.md §3
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


def test_offset_holds_start_then_ramps_from_the_offset() -> None:
    # linear ramp 1 -> 3 over t in [0, 4], t = (index - 3) // 2: index 0-2 start; 3-4 t=0; 5-6 t=1; ... 11 t=4
    sched = RampScheduler("threshold", start=1.0, end=3.0, length=4, ramp="linear", every=2, offset=3)
    engine = Engine(lambda e, b: None)
    sched.attach(engine)
    assert engine.state.threshold == 1.0
    seen: list[float] = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.threshold))
    engine.run(range(13), max_epochs=1)
    assert seen == [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0, 2.5, 2.5, 3.0, 3.0]


def test_consistency_rampup_offset_is_zero_before_the_offset() -> None:
    seen = _run(ConsistencyRampUp(weight=1.0, length=2, every=1, offset=2), 6)
    assert seen == pytest.approx([0.0, 0.0, 0.006737946999085467, 0.28650479686019015, 1.0, 1.0])  # exp(-5), exp(-1.25)
    assert seen[:2] == [0.0, 0.0]


def test_offset_with_epoch_unit_and_after_resume() -> None:
    seen = _run(ConsistencyRampUp(weight=1.0, length=1, unit="epoch", every=1, offset=1), 6, epoch_length=2)
    assert seen == pytest.approx([0.0, 0.0, math.exp(-5), math.exp(-5), 1.0, 1.0])
    handler = RampScheduler("w", 0.0, 10.0, length=10, ramp="linear", offset=5)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.iteration = 8  # as restored from a checkpoint; the next iteration is 9 -> index 8 -> t = 3
    engine.state.iteration += 1
    handler(engine)
    assert engine.state.w == 3.0


def test_simulate_values_honours_offset() -> None:
    values = RampScheduler.simulate_values(6, param_name="w", start=2.0, end=4.0, length=2, ramp="linear", offset=2)
    assert values == [[0, 2.0], [1, 2.0], [2, 2.0], [3, 3.0], [4, 4.0], [5, 4.0]]


def test_offset_is_state_and_validated() -> None:
    a = RampScheduler("w", 0.0, 1.0, length=3, offset=7)
    b = RampScheduler("w", 0.0, 1.0, length=3)
    assert a.state_dict()["offset"] == 7
    b.load_state_dict(a.state_dict())
    assert b.offset == 7 and b.value_at_index(6) == 0.0 and b.value_at_index(7) == b.value_at(0)
    with pytest.raises(ValueError, match="offset must be an integer >= 0, got -1"):
        RampScheduler("w", 0.0, 1.0, length=3, offset=-1)
    with pytest.raises(ValueError, match="offset must be an integer >= 0, got 1.5"):
        ConsistencyRampUp(offset=1.5)


def test_handlers_are_registered_as_state_providers() -> None:
    from semiseg.keys import state_providers

    assert state_providers("consistency_weight") == ("semiseg.handlers.ConsistencyRampUp",)
    RampScheduler("test_rampup_provider", 0.0, 1.0, length=1)
    assert state_providers("test_rampup_provider") == (
        "semiseg.handlers.RampScheduler(param_name='test_rampup_provider', ...)",)


# ramps given as fractions of the run follow the budget the engine runs ----------------------------------------------


def test_run_steps_stretch_the_ramp_over_the_engines_budget() -> None:
    # UA-MT: 0.1 * sigmoid_rampup(iter // (6000 // 40), 40) (SSL4MIS: 30000 // 200 over 200 steps); here 4 steps
    # over a 12-iteration run: every = 3
    seen = _run(ConsistencyRampUp(weight=1.0, length=4, every=1000, run_steps=4), 12, epoch_length=4)
    assert seen == pytest.approx([sigmoid_rampup(i // 3, 4) for i in range(12)])
    assert ConsistencyRampUp.simulate_values(8, weight=1.0, length=4, run_steps=4)[5][1] == pytest.approx(
        sigmoid_rampup(5 // 2, 4))


def test_a_resume_with_a_larger_budget_stretches_a_restored_ramp() -> None:
    first = ConsistencyRampUp(weight=1.0, length=4, run_steps=4)
    _run(first, 8, epoch_length=4)
    assert first.every == 2
    resumed = ConsistencyRampUp(weight=1.0, length=4, run_steps=4)
    resumed.load_state_dict(first.state_dict())  # every == 2 restored ...
    engine = Engine(lambda e, b: None)
    resumed.attach(engine)
    engine.state.max_epochs, engine.state.epoch_length, engine.state.iteration = 4, 4, 9  # ... budget now 16
    resumed(engine)
    assert resumed.every == 4 and engine.state.consistency_weight == pytest.approx(sigmoid_rampup(8 // 4, 4))


def test_length_and_offset_fractions() -> None:
    # UA-MT threshold: sigmoid_rampup(iter, max_iter); BPL-style warm-up from 0.4 of the run
    threshold = RampScheduler("thr", 0.0, 1.0, length=1, length_fraction=1.0)
    assert [v for _, v in threshold.simulate_values(10, param_name="thr", start=0.0, end=1.0, length=1,
                                                    length_fraction=1.0)] == pytest.approx(
        [sigmoid_rampup(i, 10) for i in range(10)])
    warm = RampScheduler.simulate_values(10, param_name="w", start=0.0, end=1.0, length=1, ramp="linear",
                                         offset_fraction=0.4)
    assert [v for _, v in warm] == [0.0] * 5 + [1.0] * 5  # offset = floor(0.4 * 10) = 4; t = 1 from index 5
    threshold.fit(25)
    assert threshold.length == 25.0
    for kwargs, match in [({"run_steps": 0}, "run_steps"), ({"length_fraction": 0}, "length_fraction"),
                          ({"offset_fraction": -0.1}, "offset_fraction")]:
        with pytest.raises(ValueError, match=match):
            RampScheduler("w", 0.0, 1.0, length=1, **kwargs)


def test_a_state_saved_before_run_steps_existed_still_loads() -> None:
    handler = ConsistencyRampUp(weight=0.1, length=40, run_steps=40)
    old = {k: v for k, v in ConsistencyRampUp(weight=0.2, every=7).state_dict().items()
           if k not in ("run_steps", "length_fraction", "offset_fraction")}
    handler.load_state_dict(old)
    assert (handler.end, handler.every, handler.run_steps) == (0.2, 7, 40)
