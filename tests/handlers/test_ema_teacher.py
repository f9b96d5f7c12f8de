"""EMATeacher against docs/architecture.md §3: alpha = min(1 - 1/(step + 1), decay), first update copies the student."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from semiseg.handlers import EMATeacher
from semiseg.keys import SSLKeys


def _linear(value: float) -> nn.Linear:
    net = nn.Linear(2, 1)
    nn.init.constant_(net.weight, value)
    nn.init.constant_(net.bias, value)
    return net


def test_first_update_copies_student() -> None:
    teacher, student = _linear(1.0), _linear(3.0)
    alpha = EMATeacher.update(teacher, student, step=0, decay=0.99)
    assert alpha == 0.0
    assert torch.equal(teacher.weight, student.weight)


def test_second_update_is_halfway() -> None:
    teacher, student = _linear(1.0), _linear(3.0)
    alpha = EMATeacher.update(teacher, student, step=1, decay=0.99)
    assert alpha == 0.5
    assert torch.allclose(teacher.weight, torch.full((1, 2), 2.0))


def test_alpha_capped_by_decay() -> None:
    teacher, student = _linear(1.0), _linear(2.0)
    alpha = EMATeacher.update(teacher, student, step=1000, decay=0.99)
    assert alpha == 0.99
    # 0.99 * 1 + 0.01 * 2 = 1.01
    assert torch.allclose(teacher.bias, torch.tensor([1.01]))


def test_teacher_lies_strictly_between_old_value_and_student() -> None:
    teacher, student = _linear(1.0), _linear(2.0)
    EMATeacher.update(teacher, student, step=5, decay=0.99)
    assert torch.all(teacher.weight > 1.0) and torch.all(teacher.weight < 2.0)


def _bn_pair() -> tuple[nn.BatchNorm1d, nn.BatchNorm1d]:
    teacher, student = nn.BatchNorm1d(2), nn.BatchNorm1d(2)
    student.running_mean.fill_(4.0)
    return teacher, student


def test_buffer_policy_ema_train_leaves_buffers() -> None:
    teacher, student = _bn_pair()
    EMATeacher.update(teacher, student, step=3, buffer_policy="ema_train")
    assert torch.equal(teacher.running_mean, torch.zeros(2))


def test_buffer_policy_copy() -> None:
    teacher, student = _bn_pair()
    EMATeacher.update(teacher, student, step=3, buffer_policy="copy")
    assert torch.equal(teacher.running_mean, torch.full((2,), 4.0))


def test_buffer_policy_update_averages_float_buffers() -> None:
    teacher, student = _bn_pair()
    alpha = EMATeacher.update(teacher, student, step=3, decay=0.99, buffer_policy="update")  # alpha = 0.75
    assert alpha == 0.75
    assert torch.allclose(teacher.running_mean, torch.full((2,), 1.0))


def test_teacher_has_no_grad_and_is_a_copy() -> None:
    student = _linear(1.0)
    handler = EMATeacher(student)
    assert all(not p.requires_grad for p in handler.teacher.parameters())
    assert handler.teacher is not student
    assert handler.teacher.training


def test_handler_updates_after_each_iteration_and_publishes_teacher() -> None:
    student = _linear(1.0)
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)

    def step(engine: Engine, batch: object) -> None:
        optimizer.zero_grad()
        student(torch.ones(1, 2)).sum().backward()  # grad of weight = 1, bias = 1: params -= 1 each step
        optimizer.step()

    engine = Engine(step)
    handler = EMATeacher(student, decay=0.5)
    handler.attach(engine)
    handler.attach(engine)  # idempotent
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(float(handler.teacher.bias)))
    engine.run([0, 0, 0], max_epochs=1)
    # student bias: 0, -1, -2.  teacher: copy -> 0; alpha=min(0.5, 0.5): 0.5*0 + 0.5*-1 = -0.5; 0.5*-0.5 + 0.5*-2
    assert seen == pytest.approx([0.0, -0.5, -1.25])
    assert getattr(engine.state, SSLKeys.TEACHER.value) is handler.teacher


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(_linear(1.0), decay=1.5)
    with pytest.raises(ValueError, match="buffer_policy"):
        EMATeacher(_linear(1.0), buffer_policy="average")


def test_state_dict_roundtrip() -> None:
    a, b = EMATeacher(_linear(1.0)), EMATeacher(_linear(2.0))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.teacher.weight, a.teacher.weight)
