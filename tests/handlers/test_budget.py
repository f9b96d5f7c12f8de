"""BudgetLrScheduleHandler: the learning-rate schedule spans the budget the run trains (docs/architecture.md §2)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from semiseg.engines import SemiSupervisedTrainer
from semiseg.handlers import BudgetLrScheduleHandler
from semiseg.methods import SupervisedMethod
from tests.helpers import tiny_unet


def _run(loaders, max_epochs: int, epoch_length: int, total_iters: int, state: dict | None = None,
         scheduler: str = "poly") -> tuple[list[float], dict]:
    net = tiny_unet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    if scheduler == "poly":
        sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_iters, power=0.9)
    elif scheduler == "step":  # total_iters: the step size
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=total_iters, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_iters)
    trainer = SemiSupervisedTrainer("cpu", max_epochs, loaders[0], net, opt, SupervisedMethod(),
                                    epoch_length=epoch_length, train_handlers=[BudgetLrScheduleHandler(sched)])
    objects = {"optimizer": opt, "lr_scheduler": sched, "trainer": trainer}
    if state is not None:
        for key, obj in objects.items():
            obj.load_state_dict(state[key])
        trainer.state.max_epochs = max_epochs  # as MONAI's CheckpointLoader keeps the new run's budget
    lrs: list[float] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(opt.param_groups[0]["lr"]))
    trainer.run()
    return lrs, {key: obj.state_dict() for key, obj in objects.items()}


def _poly(step: int, total: int) -> float:
    return 0.1 * (1 - min(step, total) / total) ** 0.9


def test_the_schedule_spans_the_budget_the_trainer_runs_not_the_configured_one(loaders) -> None:
    # the config said 4 iterations (max_iterations), MONAI Label set train#trainer#max_epochs = 3 epochs of 2
    lrs, state = _run(loaders, max_epochs=3, epoch_length=2, total_iters=4)
    assert lrs == pytest.approx([_poly(i, 6) for i in range(6)])
    assert state["lr_scheduler"]["total_iters"] == 6


def test_a_resume_with_a_larger_budget_continues_on_the_larger_schedule_instead_of_at_zero(loaders) -> None:
    lrs, state = _run(loaders, max_epochs=2, epoch_length=2, total_iters=4)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # the 4-iteration schedule ended at 0
    resumed, _ = _run(loaders, max_epochs=4, epoch_length=2, total_iters=8, state=state)
    assert resumed == pytest.approx([_poly(i, 8) for i in range(4, 8)]) and min(resumed) > 0


def test_cosine_annealing_is_fitted_too_and_other_schedulers_are_refused(loaders) -> None:
    lrs, state = _run(loaders, max_epochs=2, epoch_length=2, total_iters=100, scheduler="cosine")
    assert state["lr_scheduler"]["T_max"] == 4 and lrs[2] == pytest.approx(0.05)
    opt = torch.optim.SGD(tiny_unet().parameters(), lr=0.1)
    with pytest.raises(TypeError, match="fits PolynomialLR, CosineAnnealingLR to the run's budget.*got ExponentialLR"):
        BudgetLrScheduleHandler(torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5))


def test_a_step_schedule_keeps_its_fixed_steps_whatever_the_budget(loaders) -> None:
    """UA-MT's LA code (train_LA_meanteacher_certainty_unlabel.py): ``lr = base * 0.1 ** (iter_num // 2500)`` set
    after iteration ``iter_num``, i.e. iterations 1..2500 at the base rate; here steps of 3 iterations."""
    lrs, state = _run(loaders, max_epochs=4, epoch_length=2, total_iters=3, scheduler="step")
    assert lrs == pytest.approx([0.1 * 0.1 ** (i // 3) for i in range(8)])
    assert state["lr_scheduler"]["step_size"] == 3
