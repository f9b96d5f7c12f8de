"""Exponential-moving-average teacher (Mean Teacher and every method built on it)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from semiseg.keys import SSLIterationEvents, SSLKeys, provides_state
from semiseg.modes import ensure_mode

__all__ = ["EMATeacher", "BUFFER_POLICIES"]

BUFFER_POLICIES = ("ema_train", "copy", "update")


def _unwrap(module: nn.Module) -> nn.Module:
    """Return the wrapped module of a DataParallel / DistributedDataParallel model."""
    return module.module if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else module


@provides_state(SSLKeys.TEACHER, name="semiseg.handlers.EMATeacher")
class EMATeacher:
    """Keep a teacher network as the exponential moving average of the student's parameters.

    ``teacher = alpha * teacher + (1 - alpha) * student`` after every optimiser step, with
    ``alpha = min(1 - 1 / (step + 1), decay)`` and ``step`` the number of updates done before this one, so the first
    update copies the student (Tarvainen & Valpola, NeurIPS 2017, Sec. 3; SSL4MIS ``update_ema_variables``;
    docs/architecture.md §3). Ignite's ``EMAHandler`` calls ``1 - decay`` the momentum; semiseg uses ``decay``
    throughout.

    The teacher is a deep copy of the (unwrapped) student with ``requires_grad=False``, updated by one fused
    ``torch._foreach_mul_`` / ``torch._foreach_add_`` over all parameters. It is published as
    ``engine.state.teacher`` (``SSLKeys.TEACHER``) for methods to read, and its ``state_dict`` goes into checkpoints
    (``"teacher": "$@ema_teacher.teacher"`` in a config's ``save_dict``).

    Args:
        network: the student.
        decay: the upper bound of alpha, 0.99 in the reference code.
        buffer_policy: what happens to buffers (BatchNorm statistics), as in Ignite's ``EMAHandler``:
            ``"ema_train"`` (reference behaviour): buffers are left alone; the teacher runs in train mode and its
            own forward passes update them. ``"copy"``: copy the student's buffers after each update.
            ``"update"``: floating-point buffers are averaged like parameters (integer buffers copied).
        teacher_train_mode: keep the teacher in train mode (dropout and BatchNorm batch statistics on), as the
            reference code does and UA-MT's Monte-Carlo uncertainty needs.

    Raises:
        ValueError: on a decay outside (0, 1] or an unknown buffer policy.
    """

    def __init__(
        self,
        network: nn.Module,
        decay: float = 0.99,
        buffer_policy: str = "ema_train",
        teacher_train_mode: bool = True,
    ) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r} ({type(decay).__name__}).")
        if buffer_policy not in BUFFER_POLICIES:
            raise ValueError(f"buffer_policy must be one of {BUFFER_POLICIES}, got {buffer_policy!r}.")
        self.student = network
        self.decay = float(decay)
        self.buffer_policy = buffer_policy
        self.teacher_train_mode = teacher_train_mode
        self.teacher = copy.deepcopy(_unwrap(network))
        for param in self.teacher.parameters():
            param.detach_()
            param.requires_grad_(False)
        self.teacher.train(teacher_train_mode)

    @staticmethod
    @torch.no_grad()
    def update(
        teacher: nn.Module, student: nn.Module, step: int, decay: float = 0.99, buffer_policy: str = "ema_train"
    ) -> float:
        """One EMA update of ``teacher`` towards ``student``.

        Args:
            teacher: the EMA network, updated in place.
            student: the trained network (DataParallel/DDP wrappers are unwrapped).
            step: updates done before this one (the reference code's ``global_step``, counted before increment).
            decay: upper bound of alpha.
            buffer_policy: see the class docstring.

        Returns:
            The alpha used, ``min(1 - 1 / (step + 1), decay)``.

        Raises:
            ValueError: if the two networks do not have the same parameters.
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}.")
        student = _unwrap(student)
        alpha = min(1.0 - 1.0 / (step + 1), decay)
        t_params = list(teacher.parameters())
        s_params = [p.detach() for p in student.parameters()]
        if len(t_params) != len(s_params):
            raise ValueError(
                f"teacher has {len(t_params)} parameter tensors but the student has {len(s_params)}: "
                "the teacher must be a copy of the student."
            )
        torch._foreach_mul_(t_params, alpha)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - alpha)
        if buffer_policy != "ema_train":
            for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
                if buffer_policy == "update" and t_buf.is_floating_point():
                    t_buf.mul_(alpha).add_(s_buf.detach(), alpha=1.0 - alpha)
                else:
                    t_buf.copy_(s_buf.detach())
        return alpha

    def attach(self, engine: Engine) -> None:
        """Publish the teacher on ``engine.state`` and update it after every iteration (idempotent)."""
        if not engine.has_event_handler(self._publish, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._publish)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if SSLIterationEvents.TEACHER_UPDATED not in engine._allowed_events:
            engine.register_events(*SSLIterationEvents)
        self._publish(engine)

    def _publish(self, engine: Engine) -> None:
        setattr(engine.state, SSLKeys.TEACHER.value, self.teacher)

    def __call__(self, engine: Engine) -> None:
        """Update the teacher after the optimiser step of iteration ``engine.state.iteration``."""
        self.update(self.teacher, self.student, engine.state.iteration - 1, self.decay, self.buffer_policy)
        ensure_mode(self.teacher, self.teacher_train_mode)
        engine.fire_event(SSLIterationEvents.TEACHER_UPDATED)

    def state_dict(self) -> dict[str, Any]:
        """The teacher's weights, for checkpoints."""
        return self.teacher.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the teacher's weights from a checkpoint."""
        self.teacher.load_state_dict(state_dict)
