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


# a run shorter than the ramp's steps has them rescaled to it: the ramp ends at its last iteration -------------------


def test_a_run_shorter_than_run_steps_ends_at_the_full_weight() -> None:
    # MONAI Label's one-epoch run of 10 iterations with Mean Teacher's 40-step ramp: t = index * 40 // 9
    seen = _run(ConsistencyRampUp(weight=0.1, length=40, run_steps=40), 10)
    assert seen == pytest.approx([0.1 * sigmoid_rampup(i * 40 // 9, 40) for i in range(10)])
    assert seen[0] == pytest.approx(0.1 * math.exp(-5)) and seen[-1] == 0.1
    assert seen[-2] < 0.1  # the full weight first at the last iteration, not before
    # one step per iteration (the old fallback) stopped at 5% of the weight
    assert 0.1 * sigmoid_rampup(9, 40) == pytest.approx(0.1 * math.exp(-5 * (31 / 40) ** 2))


def test_a_ramp_ending_before_the_last_step_ends_at_the_same_fraction_of_a_short_run() -> None:
    # UGPCL: 40 of 60 steps; over a 10-iteration run t = index * 60 // 9 reaches 40 at index 6 (6 * 60 // 9 = 40)
    values = [v for _, v in ConsistencyRampUp.simulate_values(10, weight=1.0, length=40, run_steps=60)]
    assert values[6] == 1.0 and values[5] < 1.0 and values[9] == 1.0


@pytest.mark.parametrize("budget", [2, 3, 39, 40])
def test_the_rescaled_ramp_ends_at_the_last_iteration_of_any_short_run(budget: int) -> None:
    handler = ConsistencyRampUp(weight=1.0, length=40, run_steps=40)
    values = [v for _, v in handler.simulate_values(budget, weight=1.0, length=40, run_steps=40)]
    assert values[0] == pytest.approx(math.exp(-5)) and values[-1] == 1.0 and max(values[:-1]) < 1.0
    handler.fit(budget)
    assert handler.span == budget - 1 and handler.state_dict()["span"] == budget - 1


def test_rescaling_meets_one_step_per_unit_at_run_steps_plus_one() -> None:
    # n = run_steps + 1 units is not rescaled, and t = index // 1 is what rescaling would give: index * 40 // 40
    handler = ConsistencyRampUp(weight=1.0, length=40, run_steps=40)
    handler.fit(41)
    assert handler.span is None and handler.every == 1
    assert [handler.position(i) for i in range(41)] == [i * 40 // 40 for i in range(41)]
    handler.fit(40)  # n = run_steps: rescaled, t = index * 40 // 39 reaches 40 at the last index
    assert handler.span == 39 and [handler.position(i) for i in (0, 1, 38, 39)] == [0, 1, 38, 40]
    handler.fit(10)  # a resume with a smaller budget rescales again; a longer one undoes it
    assert handler.span == 9
    handler.fit(1500)
    assert (handler.span, handler.every) == (None, 37)


def test_a_one_unit_run_and_an_offset_with_rescaled_steps() -> None:
    assert ConsistencyRampUp.simulate_values(1, weight=1.0, length=4, run_steps=4) == [[0, pytest.approx(math.exp(-5))]]
    # offset 2 of 6 iterations: the ramp's 4 units (index 2..5) take its 4 steps: t = (index - 2) * 4 // 3
    values = RampScheduler.simulate_values(6, param_name="w", start=0.0, end=4.0, length=4, ramp="linear",
                                           offset=2, run_steps=4)
    assert values == [[0, 0.0], [1, 0.0], [2, 0.0], [3, 1.0], [4, 2.0], [5, 4.0]]


def test_a_resumed_short_run_continues_on_the_rescaled_curve() -> None:
    handler = ConsistencyRampUp(weight=1.0, length=40, run_steps=40)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.state.max_epochs, engine.state.epoch_length, engine.state.iteration = 1, 10, 9  # the last of 10
    engine.state.iteration += 1
    handler(engine)
    assert engine.state.consistency_weight == 1.0
    fresh = ConsistencyRampUp(weight=1.0, length=40, run_steps=40)
    fresh.load_state_dict({k: v for k, v in handler.state_dict().items() if k != "span"})  # saved before span
    assert fresh.span is None and fresh.run_steps == 40


# every bundle's ramps, read from its train.json -----------------------------------------------------------------------

_RAMP_TARGETS = ("semiseg.handlers.ConsistencyRampUp", "semiseg.handlers.RampScheduler")


def _bundle_ramps(bundle: str, max_iterations: int, **overrides) -> tuple[dict[str, RampScheduler], int, int]:
    """The bundle's ramp handlers (by config id) built for ``max_iterations``, and its epoch_length / max_epochs."""
    from monai.bundle import ConfigParser

    from tests.bundles.conftest import config

    parser = ConfigParser()
    parser.read_config(config(bundle, "train.json"))
    parser.update({"max_iterations": max_iterations, **overrides})
    ids = [key for key, value in parser.get().items() if isinstance(value, dict) and value.get("_target_") in
           _RAMP_TARGETS]
    ramps = {key: parser.get_parsed_content(key, instantiate=True) for key in ids}
    return ramps, parser.get_parsed_content("epoch_length"), parser.get_parsed_content("max_epochs")


def _last_values(ramps: dict[str, RampScheduler], epoch_length: int, max_epochs: int) -> dict[str, list[float]]:
    """Run a bare Ignite engine over the bundle's budget and record every ramp's value at every iteration."""
    engine = Engine(lambda e, b: None)
    seen: dict[str, list[float]] = {key: [] for key in ramps}
    for ramp in ramps.values():
        ramp.attach(engine)

    def record(e: Engine) -> None:
        for key, ramp in ramps.items():
            seen[key].append(getattr(e.state, ramp.param_name))

    engine.add_event_handler(Events.ITERATION_COMPLETED, record)
    engine.run(range(epoch_length), max_epochs=max_epochs)
    return seen


def _old_value(ramp: RampScheduler, index: int, budget: int) -> float:
    """The value before short runs were rescaled: ``every = max(1, budget // run_steps)``, ``t = index // every``."""
    every = max(1, budget // ramp.run_steps) if ramp.run_steps is not None else ramp.every
    return ramp.start if index < ramp.offset else ramp.value_at((index - ramp.offset) // every)


def _bundles() -> tuple[str, ...]:
    from tests.bundles.conftest import BUNDLES

    return BUNDLES


# where a 10-iteration run ends, by ramp id: the weights at their end; UA-MT's threshold is the reference's
# sigmoid_rampup(iter, max_iter) at iter = 9 of 10; UGPCL's contrastive weight is a step, not a ramp: on from 10%
# of the run (contrast_start_fraction 0.1, the reference's step 1000 of 10000), so on at iteration 9 of 10
_SHORT_RUN_ENDS = {
    "uncertainty_threshold_handler": lambda ramp: ramp.value_at(9),
    "contrast_weight_handler": lambda ramp: ramp.end,
}


@pytest.mark.parametrize("bundle", _bundles())
@pytest.mark.parametrize("budget", [{"max_iterations": 10}, {"max_iterations": 10, "iterations_per_epoch": 5}])
def test_every_bundles_ramps_end_at_the_last_iteration_of_a_tiny_run(bundle: str, budget: dict) -> None:
    ramps, epoch_length, max_epochs = _bundle_ramps(bundle, **budget)
    assert epoch_length * max_epochs == 10
    seen = _last_values(ramps, epoch_length, max_epochs)
    for key, ramp in ramps.items():
        expected = _SHORT_RUN_ENDS.get(key, lambda r: r.end)(ramp)
        assert seen[key][-1] == pytest.approx(expected), (bundle, key, seen[key])
        if key == "uncertainty_threshold_handler":
            assert ramp.length == 10.0  # spans the run: sigmoid_rampup(iter, max_iter)
    if bundle not in ("supervised", "layer_ensembles"):  # the supervised-only bundles have no ramp
        weights = [key for key in ramps if key not in _SHORT_RUN_ENDS]
        assert weights, f"{bundle}: no consistency / warm-up ramp found in train.json"
        for key in weights:
            assert seen[key][-1] == ramps[key].end != 0.0 and seen[key][0] < ramps[key].end, (bundle, key)


@pytest.mark.parametrize("bundle", _bundles())
def test_a_1500_iteration_demo_run_is_unchanged(bundle: str) -> None:
    """The demo budget (scripts/run_demo.py, compare_methods.py) is longer than every ramp's steps: no value
    differs from ``t = index // max(1, 1500 // run_steps)``."""
    ramps, epoch_length, max_epochs = _bundle_ramps(bundle, 1500)
    seen = _last_values(ramps, epoch_length, max_epochs)
    for key, ramp in ramps.items():
        assert ramp.span is None, (bundle, key)
        assert seen[key] == [_old_value(ramp, i, 1500) for i in range(1500)], (bundle, key)
