"""The trainer's extension points for methods with more than one trainable part, proven with the toy critic method.

Extra networks and optimisers, the second update phase, train modes, logging of every scalar term, AMP scalers, the
checkpoint round trip into fresh objects, and the errors for missing parts or state (docs/architecture.md §2,
"Methods with more than one trainable part").
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.engines import IterationEvents, SupervisedEvaluator
from monai.handlers import CheckpointLoader, LrScheduleHandler, ValidationHandler
from torch.utils.data import DataLoader

from semiseg.engines import SemiSupervisedTrainer, UnlabelledCycle, loss_terms
from semiseg.handlers import AtomicCheckpointSaver, RampScheduler
from semiseg.keys import (
    SSLIterationEvents,
    missing_state_hint,
    provides_state,
    register_state_provider,
    state_providers,
)
from semiseg.methods import MeanTeacherMethod, SSLMethod, SupervisedMethod
from tests.helpers import tiny_unet
from tests.toy_method import CRITIC_WEIGHT, ToyCritic, ToyCriticMethod

TOY_TERMS = {"loss", "sup_loss", "unsup_loss", CRITIC_WEIGHT, "critic_loss", "critic_score", "critic_updates"}


def _toy_run(
    loaders: tuple[DataLoader, DataLoader],
    max_epochs: int = 2,
    *,
    seed: int = 0,
    method: ToyCriticMethod | None = None,
    handlers: list | None = None,
    amp_dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> tuple[SemiSupervisedTrainer, dict[str, Any]]:
    """A toy-critic trainer, one iteration per epoch, and its checkpoint objects (as a bundle's checkpoint#objects)."""
    torch.manual_seed(seed)
    net, critic = tiny_unet(), ToyCritic(in_channels=3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    ramp = RampScheduler(CRITIC_WEIGHT, start=0.05, end=0.25, length=2, ramp="linear", offset=1)
    method = method or ToyCriticMethod()
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        epoch_length=1,
        train_data_loader=loaders[0],
        unlabelled_data_loader=loaders[1],
        network=net,
        optimizer=opt,
        method=method,
        networks={"critic": critic},
        optimizers={"critic": critic_opt},
        train_handlers=[ramp, LrScheduleHandler(sched, epoch_level=False, print_lr=False)] + (handlers or []),
        amp=amp_dtype is not None,
        amp_kwargs={"dtype": amp_dtype} if amp_dtype is not None else None,
        **kwargs,
    )
    objects = {"model": net, "critic": critic, "optimizer": opt, "critic_optimizer": critic_opt,
               "lr_scheduler": sched, "ramp": ramp, "method": method, "trainer": trainer}
    return trainer, objects


def _snapshot(objects: dict[str, Any]) -> dict[str, Any]:
    return {name: copy.deepcopy(obj.state_dict()) for name, obj in objects.items()}


def _assert_same(a: Any, b: Any, path: str = "") -> None:
    """Exact equality of nested state dicts (tensors bit for bit)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path} keys differ: {list(a)} vs {list(b)}"
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path} lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def _params(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


# (a) checkpoint round trip --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amp_dtype", [None, torch.float16], ids=["fp32", "fp16-amp"])
def test_checkpoint_round_trip_restores_every_state_and_continues_identically(loaders, tmp_path, amp_dtype) -> None:
    uninterrupted, full = _toy_run(loaders, max_epochs=3, amp_dtype=amp_dtype)
    uninterrupted.run()

    first, saved_objects = _toy_run(loaders, max_epochs=2, amp_dtype=amp_dtype)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=saved_objects, save_final=True,
                          final_filename="checkpoint.pt").attach(first)
    first.run()
    saved = _snapshot(saved_objects)
    assert saved["critic"]["steps"] == 4  # two critic forward passes per iteration
    assert saved["trainer"]["iteration"] == 2
    assert {k: saved["trainer"]["unlabelled"][k] for k in ("epoch", "position")} == {"epoch": 0, "position": 2}
    assert saved["method"]["updates"] == 2 and saved["ramp"]["offset"] == 1
    if amp_dtype is None:
        assert saved["trainer"]["grad_scalers"] == {}
    else:
        assert set(saved["trainer"]["grad_scalers"]) == {"optimizer", "critic"}

    resumed, fresh = _toy_run(loaders, max_epochs=3, seed=1, amp_dtype=amp_dtype)  # another seed: other weights
    assert _differs(saved["critic"], fresh["critic"].state_dict())
    CheckpointLoader(load_path=str(tmp_path / "checkpoint.pt"), load_dict=fresh).attach(resumed)
    restored: dict[str, Any] = {}
    resumed.add_event_handler(Events.STARTED, lambda e: restored.update(_snapshot(fresh)))  # after the loader
    resumed.run()

    restored["trainer"]["max_epochs"] = saved["trainer"]["max_epochs"]  # the loader keeps the new run's budget
    _assert_same(restored, saved)
    final = _snapshot(fresh)
    _assert_same(final, _snapshot(full))
    assert loss_terms(resumed.state.output) == loss_terms(uninterrupted.state.output)
    assert resumed.state.iteration == 3 and resumed.unlabelled.epoch == uninterrupted.unlabelled.epoch == 1


def test_ignite_load_objects_accepts_the_trainer_and_run_keeps_the_restored_scalers(loaders, tmp_path) -> None:
    trainer, objects = _toy_run(loaders, max_epochs=1, amp_dtype=torch.float16)
    trainer.run()
    trainer.scaler.update(new_scale=1024.0)
    trainer.scalers["critic"].update(new_scale=8.0)
    torch.save({k: v.state_dict() for k, v in objects.items()}, tmp_path / "checkpoint.pt")

    resumed, fresh = _toy_run(loaders, max_epochs=2, seed=1, amp_dtype=torch.float16)
    Checkpoint.load_objects(fresh, torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    assert resumed.state.iteration == 1 and resumed.unlabelled.state_dict()["position"] == 1
    resumed.state.max_epochs = 2  # Ignite restores the saved budget; MONAI's CheckpointLoader keeps the new one
    scalers = (resumed.scaler, resumed.scalers["critic"])
    assert (scalers[0].get_scale(), scalers[1].get_scale()) == (1024.0, 8.0)
    resumed.run()  # MONAI's Trainer.run would replace self.scaler here
    assert resumed.scaler is scalers[0] and resumed.scalers["critic"] is scalers[1]
    assert resumed.state.iteration == 2


def test_old_checkpoint_without_the_trainer_extras_still_loads(loaders) -> None:
    trainer, _ = _toy_run(loaders, max_epochs=2)
    trainer.load_state_dict({"iteration": 1, "epoch_length": 1, "max_epochs": 2})
    assert trainer.state.iteration == 1 and trainer.unlabelled.state_dict() == {"epoch": 0, "position": 0}
    assert trainer.labelled.state_dict() == {"epoch": 0, "position": 0}


def test_unlabelled_cycle_resumes_mid_pass_on_the_same_batches() -> None:
    loader = DataLoader(list(range(10)), batch_size=3)  # 4 batches per pass
    cycle = UnlabelledCycle(loader)
    drawn = [next(cycle).tolist() for _ in range(6)]
    state = cycle.state_dict()
    assert (state["epoch"], state["position"]) == (1, 2)
    later = [next(cycle).tolist() for _ in range(3)]
    resumed = UnlabelledCycle(loader)
    resumed.load_state_dict(state)
    assert [next(resumed).tolist() for _ in range(3)] == later == [[6, 7, 8], [9], [0, 1, 2]]
    assert drawn[4] == [0, 1, 2] and resumed.epoch == 2
    with pytest.raises(ValueError, match="'position' must be an integer >= 0, got -1"):
        resumed.load_state_dict({"epoch": 0, "position": -1})


# (b) the second phase steps only the critic; the main phase never changes it --------------------------------------


class _SpyMethod(ToyCriticMethod):
    """Records the weights when the second phase starts and the critic's gradients at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.at_phase_two: list[dict[str, Any]] = []

    def second_phase(self, engine, labelled, unlabelled, outputs):
        critic = self.network(engine, "critic")
        self.at_phase_two.append({
            "student": _params(engine.network),
            "critic": _params(critic),
            "critic_grads_zero": all(p.grad is None or not p.grad.any() for p in critic.parameters()),
        })
        return super().second_phase(engine, labelled, unlabelled, outputs)


def test_second_phase_steps_only_the_critic_and_the_main_phase_never_changes_it(loaders) -> None:
    method = _SpyMethod()
    trainer, objects = _toy_run(loaders, max_epochs=2, method=method)
    student, critic = objects["model"], objects["critic"]
    before: list[dict] = []
    after: list[dict] = []
    critic_grads_after_main_backward: list[bool] = []
    trainer.add_event_handler(Events.ITERATION_STARTED,
                              lambda e: before.append({"student": _params(student), "critic": _params(critic)}))
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED,
                              lambda e: after.append({"student": _params(student), "critic": _params(critic)}))
    trainer.add_event_handler(
        IterationEvents.BACKWARD_COMPLETED,
        lambda e: critic_grads_after_main_backward.append(all(p.grad.abs().sum() > 0 for p in critic.parameters())),
    )
    trainer.run()

    assert len(before) == len(method.at_phase_two) == len(after) == 2
    for start, middle, end in zip(before, method.at_phase_two, after):
        # main phase: the student moved, the critic did not, though the main loss gave it gradients ...
        assert _differs(start["student"], middle["student"])
        _assert_same(start["critic"], middle["critic"], "critic after the main phase")
        # ... which the trainer zeroed before the second phase
        assert middle["critic_grads_zero"]
        # second phase: the critic moved, the student did not
        assert _differs(middle["critic"], end["critic"])
        _assert_same(middle["student"], end["student"], "student after the second phase")
    assert critic_grads_after_main_backward == [True, True]
    assert objects["critic_optimizer"].state_dict()["state"][0]["step"] == 2  # Adam stepped once per iteration
    assert set(objects["optimizer"].state_dict()["state"]) == set(range(len(list(student.parameters()))))


class _JointMethod(SupervisedMethod):
    """CPS-like: two networks, one summed loss, two optimisers stepped together after one backward."""

    required_networks = ("second",)

    def compute(self, engine, labelled, unlabelled):
        images, labels = labelled
        a, b = engine.network(images), self.network(engine, "second")(images)
        loss_a, loss_b = self.supervised_loss(a, labels), self.supervised_loss(b, labels)
        out = self.outputs(a, loss_a)
        out["sup_loss_second"] = loss_b.detach()
        return loss_a + loss_b, out


def test_extra_optimisers_without_a_second_phase_step_with_the_main_one(loaders) -> None:
    torch.manual_seed(0)
    net, second = tiny_unet(), tiny_unet()
    opt, opt2 = (torch.optim.SGD(n.parameters(), lr=0.1) for n in (net, second))
    before = _params(second)
    phases: list[str] = []
    trainer = SemiSupervisedTrainer("cpu", 1, loaders[0], net, opt, _JointMethod(), epoch_length=2,
                                    networks={"second": second}, optimizers={"second": opt2})
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED, lambda e: phases.append("second"))
    trainer.run()
    assert _differs(before, _params(second)) and phases == []
    assert trainer.optimizers == {"optimizer": opt, "second": opt2}
    assert set(loss_terms(trainer.state.output)) == {"loss", "sup_loss", "sup_loss_second"}


# (c) train modes ----------------------------------------------------------------------------------------------------


def test_all_parts_are_in_train_mode_in_every_iteration_even_after_validation(loaders) -> None:
    trainer, objects = _toy_run(loaders, max_epochs=3)
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loaders[0], network=objects["model"])
    ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    # MONAI's evaluator restores the student's mode after validation; a custom validation or check may not

    def leave_in_eval(engine: Engine) -> None:
        for net in engine.networks.values():
            net.eval()

    trainer.add_event_handler(Events.EPOCH_COMPLETED, leave_in_eval)

    def modes(engine: Engine) -> list[bool]:
        return [m.training for net in engine.networks.values() for m in net.modules()]

    at_start, in_forward, in_second = [], [], []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: at_start.append(modes(e)))
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, lambda e: in_forward.append(all(modes(e))))
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED, lambda e: in_second.append(all(modes(e))))
    trainer.run()
    assert not any(at_start[1]) and not any(at_start[2])  # every part was in eval when the iteration began
    assert in_forward == in_second == [True, True, True]
    assert set(trainer.networks) == {"network", "critic"} and trainer.networks["critic"] is objects["critic"]


# (d) logging ---------------------------------------------------------------------------------------------------------


def test_every_scalar_term_is_logged_including_the_second_phase(loaders) -> None:
    trainer, _ = _toy_run(loaders, max_epochs=2)
    trainer.run()
    terms = loss_terms(trainer.state.output)
    assert set(terms) == TOY_TERMS and next(iter(terms)) == "loss"
    assert terms["critic_updates"] == 2.0
    assert terms[CRITIC_WEIGHT] == pytest.approx(0.05)  # iteration 2: index 1 = offset -> t = 0 -> start
    assert terms["loss"] == pytest.approx(terms["sup_loss"] + 0.05 * terms["unsup_loss"], rel=1e-5)


def test_loss_terms_takes_every_scalar_and_nothing_else() -> None:
    output = {
        "image": torch.zeros(()), "label": 1.0, "pred": torch.ones(1), "loss": torch.tensor(2.5, requires_grad=True),
        "a": torch.tensor([0.5]), "b": 3, "c": 0.25, "d": np.float32(1.5), "flag": True, "mask": torch.tensor(True),
        "map": torch.ones(2, 2), "name": "x", "none": None, "pair": (1, 2),
    }
    terms = loss_terms(output)
    assert terms == {"loss": 2.5, "a": 0.5, "b": 3.0, "c": 0.25, "d": 1.5}
    assert list(terms)[0] == "loss"
    assert loss_terms([output, output]) == terms and loss_terms([]) == {} and loss_terms(None) == {}


# AMP -----------------------------------------------------------------------------------------------------------------


class _AutocastSpy(ToyCriticMethod):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bool, torch.dtype]] = []

    def compute(self, engine, labelled, unlabelled):
        self.seen.append(("main", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().compute(engine, labelled, unlabelled)

    def second_phase(self, engine, labelled, unlabelled, outputs):
        self.seen.append(("second", torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return super().second_phase(engine, labelled, unlabelled, outputs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_amp_autocasts_on_the_trainer_device_with_one_scaler_per_phase_under_fp16(loaders, dtype) -> None:
    method = _AutocastSpy()
    trainer, _ = _toy_run(loaders, max_epochs=1, method=method, amp_dtype=dtype)
    trainer.run()
    assert method.seen == [("main", True, dtype), ("second", True, dtype)]
    assert trainer.amp_device_type == "cpu"
    if dtype == torch.float16:
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and set(trainer.scalers) == {"critic"}
        assert trainer.scalers["critic"] is not trainer.scaler
    else:
        assert trainer.scaler is None and trainer.scalers == {}


# (e) errors ----------------------------------------------------------------------------------------------------------


def _build(loaders, method: SSLMethod | None = None, **kwargs: Any) -> SemiSupervisedTrainer:
    torch.manual_seed(0)
    net = kwargs.pop("network", None) or tiny_unet()
    return SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                 method or ToyCriticMethod(), unlabelled_data_loader=loaders[1], **kwargs)


def test_missing_network_or_optimiser_names_the_part_and_the_config_id(loaders) -> None:
    critic = ToyCritic()
    critic_opt = torch.optim.Adam(critic.parameters())
    with pytest.raises(ValueError, match=r"ToyCriticMethod needs the trainable part\(s\) \['critic'\].*"
                                         r"set train#trainer#networks"):
        _build(loaders, optimizers={"critic": critic_opt})
    with pytest.raises(ValueError, match=r"optimiser 'critic'.*train#trainer#optimizers does not have \(it has "
                                         r"\[\]\): set train#trainer#optimizers"):
        _build(loaders, networks={"critic": critic})


def test_bad_extra_parts_are_rejected_with_the_bad_value(loaders) -> None:
    critic = ToyCritic()
    opt = torch.optim.Adam(critic.parameters())
    with pytest.raises(ValueError, match="may not use the name 'network'"):
        _build(loaders, networks={"network": critic, "critic": critic}, optimizers={"critic": opt})
    with pytest.raises(ValueError, match="may not use the name 'optimizer'"):
        _build(loaders, networks={"critic": critic}, optimizers={"optimizer": opt})
    with pytest.raises(TypeError, match=r"train#trainer#networks\['critic'\] must be a torch.nn.*Module, got <class "
                                        r"'str'>"):
        _build(loaders, networks={"critic": "@critic"}, optimizers={"critic": opt})
    net = tiny_unet()
    with pytest.raises(ValueError, match=r"train#trainer#networks\['critic'\] is the same object as 'network'"):
        _build(loaders, network=net, networks={"critic": net}, optimizers={"critic": opt})
    with pytest.raises(ValueError, match="in both optimisers 'optimizer' and 'critic'"):
        _build(loaders, network=net, networks={"critic": critic},
               optimizers={"critic": torch.optim.SGD(list(net.parameters())[:1], lr=0.1)})
    with pytest.warns(UserWarning, match="trainable part 'critic' has 4 trainable parameter tensor"):
        _build(loaders, method=SupervisedMethod(), networks={"critic": critic})
    with pytest.raises(ValueError, match="accumulation_steps must be 1, got 4"):
        _build(loaders, networks={"critic": critic}, optimizers={"critic": opt}, accumulation_steps=4)


def test_missing_state_names_the_provider_from_the_registry(loaders) -> None:
    critic = ToyCritic()
    trainer = _build(loaders, networks={"critic": critic}, optimizers={"critic": torch.optim.Adam(critic.parameters())})
    with pytest.raises(RuntimeError, match=r"ToyCriticMethod reads engine.state.critic_weight, which no handler sets: "
                                           r"add .*RampScheduler\(param_name='critic_weight', \.\.\.\)"):
        trainer.run()
    mean_teacher = _build(loaders, method=MeanTeacherMethod())
    with pytest.raises(RuntimeError) as err:
        mean_teacher.run()
    assert str(err.value) == (
        "MeanTeacherMethod reads engine.state.teacher, engine.state.consistency_weight, which no handler sets: "
        "add semiseg.handlers.EMATeacher (sets engine.state.teacher) to train#handlers; "
        "add semiseg.handlers.ConsistencyRampUp (sets engine.state.consistency_weight) to train#handlers."
    )


def test_state_provider_registry() -> None:
    assert state_providers("teacher") == ("semiseg.handlers.EMATeacher",)
    assert state_providers("consistency_weight") == ("semiseg.handlers.ConsistencyRampUp",)
    RampScheduler("test_registry_threshold", 0.0, 1.0, length=1)
    assert state_providers("test_registry_threshold") == (
        "semiseg.handlers.RampScheduler(param_name='test_registry_threshold', ...)",)

    @provides_state("test_registry_queue")
    class QueueHandler:
        pass

    assert state_providers("test_registry_queue") == (f"{__name__}.test_state_provider_registry.<locals>.QueueHandler",)
    register_state_provider("test_registry_queue", "my.Other")
    register_state_provider("test_registry_queue", "my.Other")
    assert missing_state_hint("test_registry_queue").startswith(f"add {__name__}.test_state_provider_registry")
    assert " or my.Other (sets engine.state.test_registry_queue)" in missing_state_hint("test_registry_queue")
    assert missing_state_hint("test_registry_nobody") == (
        "add a handler that sets engine.state.test_registry_nobody to train#handlers (for a ramped value: "
        "semiseg.handlers.RampScheduler(param_name='test_registry_nobody', ...))")
    with pytest.raises(ValueError, match="non-empty"):
        register_state_provider("", "x")


def test_method_accessors_and_defaults_fail_clearly(loaders) -> None:
    critic = ToyCritic()
    trainer = _build(loaders, networks={"critic": critic}, optimizers={"critic": torch.optim.Adam(critic.parameters())})
    method = trainer.method
    assert method.network(trainer, "critic") is critic and method.network(trainer, "network") is trainer.network
    with pytest.raises(KeyError, match=r"'head', but the trainer has \['critic', 'network'\]: add it to "
                                       r"train#trainer#networks"):
        method.network(trainer, "head")
    with pytest.raises(NotImplementedError, match="sets second_phase_optimizer=None but does not implement"):
        SupervisedMethod().second_phase(trainer, (torch.zeros(1), torch.zeros(1)), None, {})


def test_method_state_dict_round_trip_and_errors() -> None:
    a, b = ToyCriticMethod(), ToyCriticMethod()
    a.updates, a.critic_score = 7, torch.tensor(0.25)
    target = b.critic_score
    b.load_state_dict(a.state_dict())
    assert b.updates == 7 and b.critic_score is target and b.critic_score.item() == 0.25
    assert SupervisedMethod().state_dict() == {}
    with pytest.raises(ValueError, match=r"missing \['critic_score'\], unexpected \['queue'\]"):
        b.load_state_dict({"updates": 1, "queue": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"critic_score: the checkpoint's tensor has shape \(2,\), the method's \(\)"):
        b.load_state_dict({"updates": 1, "critic_score": torch.zeros(2)})
    b.critic_score = "high"
    with pytest.raises(TypeError, match="ToyCriticMethod.critic_score is a str"):
        b.state_dict()


class _ClashMethod(ToyCriticMethod):
    def second_phase(self, engine, labelled, unlabelled, outputs):
        loss, terms = super().second_phase(engine, labelled, unlabelled, outputs)
        return loss, {**terms, "sup_loss": terms["critic_loss"]}


class _NaNCriticMethod(ToyCriticMethod):
    def second_phase(self, engine, labelled, unlabelled, outputs):
        loss, terms = super().second_phase(engine, labelled, unlabelled, outputs)
        return loss * math.nan, terms


def test_second_phase_clashing_terms_and_non_finite_loss(loaders) -> None:
    trainer, _ = _toy_run(loaders, max_epochs=1, method=_ClashMethod())
    with pytest.raises(ValueError, match=r"returned the terms \['sup_loss'\], which the main phase's output"):
        trainer.run()

    trainer, objects = _toy_run(loaders, max_epochs=1, method=_NaNCriticMethod())
    critic_before, student_before = _params(objects["critic"]), _params(objects["model"])
    with pytest.raises(FloatingPointError, match=r"non-finite second-phase loss \(optimiser 'critic'\) nan at "
                                                 r"iteration 1 .*terms \{'critic_loss'"):
        trainer.run()
    _assert_same(critic_before, _params(objects["critic"]), "critic")
    assert _differs(student_before, _params(objects["model"]))  # the main phase had been applied

    trainer, objects = _toy_run(loaders, max_epochs=1, method=_NaNCriticMethod(), nan_policy="skip")
    phases: list[int] = []
    trainer.add_event_handler(SSLIterationEvents.SECOND_PHASE_COMPLETED, lambda e: phases.append(1))
    trainer.run()
    _assert_same(critic_before, _params(objects["critic"]), "critic")
    assert phases == [] and trainer.state.iteration == 1
