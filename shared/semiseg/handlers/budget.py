"""A learning-rate schedule that spans the budget the run actually trains, whatever set it."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import LrScheduleHandler
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, PolynomialLR, StepLR

__all__ = ["BudgetLrScheduleHandler", "run_budget"]

# scheduler type -> the attribute that holds the length of the schedule
_SPANS: dict[type, str] = {PolynomialLR: "total_iters", CosineAnnealingLR: "T_max"}
# schedules counted in fixed steps, not in fractions of the run: stepped as they are
_FIXED: tuple[type, ...] = (StepLR, MultiStepLR)


def run_budget(engine: Engine, unit: str = "iteration") -> int:
    """The budget of the engine's current run: ``max_epochs x epoch_length`` iterations, or ``max_epochs`` epochs.

    Read when a handler acts, not when the config is parsed: ``--max_iterations``, a ``train#trainer#max_epochs``
    override (MONAI Label) and a resume with a larger budget all change it (docs/architecture.md §2, "Budgets
    and the hot loop").

    Args:
        engine: the trainer.
        unit: ``"iteration"`` or ``"epoch"``.

    Returns:
        The budget, counted in ``unit`` (0 before the engine has one).
    """
    epochs = int(engine.state.max_epochs or 0)
    return epochs if unit == "epoch" else epochs * int(engine.state.epoch_length or 0)


class BudgetLrScheduleHandler(LrScheduleHandler):
    """MONAI's ``LrScheduleHandler`` whose scheduler always spans the run's budget (:func:`run_budget`).

    At every ``EPOCH_STARTED`` (after a resumed run's checkpoint was loaded at ``STARTED``) the scheduler's length
    (``PolynomialLR.total_iters``, ``CosineAnnealingLR.T_max``) is set to the budget, in iterations
    (``epoch_level=False``, stepped every iteration) or epochs; when it changes, the learning rates are reset to
    the schedule's closed form at the scheduler's position, because the chained form PyTorch steps with would
    keep the old curve's value (a resumed run whose old schedule had reached 0 would train at learning rate 0).
    The config's ``total_iters`` is only the default until the run starts.

    A ``StepLR`` or ``MultiStepLR`` counts fixed steps, the unit of a paper's protocol (Yu et al., UA-MT, MICCAI
    2019, LA code: the learning rate divided by 10 every 2500 iterations, ``configs/la.json``): it is stepped as
    it is, whatever the budget.

    Args:
        lr_scheduler: a ``PolynomialLR`` or ``CosineAnnealingLR`` (fitted to the budget), or a ``StepLR`` or
            ``MultiStepLR`` (fixed steps).
        epoch_level: step per epoch instead of per iteration (MONAI's argument).
        kwargs: other ``LrScheduleHandler`` arguments (``print_lr``, ``name``, ...).

    Raises:
        TypeError: for another scheduler type.
    """

    def __init__(self, lr_scheduler: LRScheduler, epoch_level: bool = False, **kwargs: Any) -> None:
        span = next((attr for cls, attr in _SPANS.items() if isinstance(lr_scheduler, cls)), None)
        if span is None and not isinstance(lr_scheduler, _FIXED):
            raise TypeError(
                f"BudgetLrScheduleHandler fits {', '.join(c.__name__ for c in _SPANS)} to the run's budget and steps "
                f"{', '.join(c.__name__ for c in _FIXED)} as they are, got {type(lr_scheduler).__name__}: use "
                "monai.handlers.LrScheduleHandler and set its length yourself."
            )
        super().__init__(lr_scheduler=lr_scheduler, epoch_level=epoch_level, **kwargs)
        self.span = span

    def attach(self, engine: Engine) -> None:
        """MONAI's step event, plus :meth:`fit` at every ``EPOCH_STARTED``."""
        super().attach(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self.fit)

    def fit(self, engine: Engine) -> None:
        """Make the schedule span the budget; reset the learning rates to its closed form if its length changed."""
        if self.span is None:  # fixed steps
            return
        scheduler = self.lr_scheduler
        budget = run_budget(engine, "epoch" if self.epoch_level else "iteration")
        old = getattr(scheduler, self.span)
        if budget < 1 or old == budget:
            return
        setattr(scheduler, self.span, budget)
        rates = scheduler._get_closed_form_lr()  # type: ignore[attr-defined]
        for group, rate in zip(scheduler.optimizer.param_groups, rates):
            group["lr"] = rate
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # type: ignore[attr-defined]
        unit = "epochs" if self.epoch_level else "iterations"
        self.logger.info(
            f"{type(scheduler).__name__} now spans this run's budget, {budget} {unit} (was {old}); learning rate "
            f"at step {scheduler.last_epoch}: {', '.join(f'{float(r):.4g}' for r in rates)}."
        )
