"""SemiSupervisedTrainer: a few iterations on tiny volumes, resume, and failure messages."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from monai.handlers import CheckpointLoader
from torch.utils.data import DataLoader

from semiseg.engines import SemiSupervisedTrainer, loss_terms
from semiseg.handlers import AtomicCheckpointSaver, ConsistencyRampUp, EMATeacher
from semiseg.methods import MeanTeacherMethod, SupervisedMethod
from tests.helpers import labelled_items, tiny_unet


def _mean_teacher_run(loaders, max_epochs: int = 2, epoch_length: int = 3, handlers: list | None = None):
    torch.manual_seed(0)
    net = tiny_unet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=max_epochs * epoch_length, power=0.9)
    ema = EMATeacher(net, decay=0.99)
    ramp = ConsistencyRampUp(weight=0.1, length=4, every=1)
    trainer = SemiSupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        train_data_loader=loaders[0],
        unlabelled_data_loader=loaders[1],
        network=net,
        optimizer=opt,
        method=MeanTeacherMethod(),
        train_handlers=[ema, ramp] + (handlers or []),
    )
    objects = {"model": net, "teacher": ema, "optimizer": opt, "lr_scheduler": sched, "rampup": ramp,
               "trainer": trainer}
    return trainer, objects


def test_mean_teacher_iterations_update_student_teacher_and_state(loaders) -> None:
    trainer, objects = _mean_teacher_run(loaders)
    before = [p.clone() for p in objects["model"].parameters()]
    trainer.run()
    assert trainer.state.iteration == 6  # max_epochs x epoch_length, labelled loader (1 batch) restarted
    assert any(not torch.equal(a, b) for a, b in zip(before, objects["model"].parameters()))
    teacher = objects["teacher"].teacher
    assert trainer.state.teacher is teacher
    assert any(not torch.equal(t, s) for t, s in zip(teacher.parameters(), objects["model"].parameters()))
    terms = loss_terms(trainer.state.output)
    assert set(terms) == {"loss", "sup_loss", "unsup_loss", "consistency_weight"}
    assert terms["consistency_weight"] == pytest.approx(ConsistencyRampUp(0.1, 4, every=1).value_at(5))


def test_unlabelled_loader_cycles_independently(loaders) -> None:
    trainer, _ = _mean_teacher_run(loaders, max_epochs=1, epoch_length=5)  # unlabelled: 2 batches per pass
    trainer.run()
    assert trainer.unlabelled.epoch == 2


def test_resume_restores_student_teacher_optimizer_ramp_and_iteration(loaders, tmp_path) -> None:
    trainer, objects = _mean_teacher_run(loaders, max_epochs=2, epoch_length=2)
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, save_final=True,
                                  final_filename="checkpoint.pt", save_interval=1, interval_filename="checkpoint.pt",
                                  n_saved=1)
    saver.attach(trainer)
    trainer.run()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert set(saved) == {"model", "teacher", "optimizer", "lr_scheduler", "rampup", "trainer"}
    assert not list(tmp_path.glob("tmp*")), "atomic write left a temp file"

    resumed, fresh = _mean_teacher_run(loaders, max_epochs=3, epoch_length=2)
    with torch.no_grad():
        for p in fresh["model"].parameters():
            p.zero_()
    CheckpointLoader(load_path=str(tmp_path / "checkpoint.pt"), load_dict=fresh).attach(resumed)
    iterations = []
    resumed.add_event_handler(Events.ITERATION_STARTED, lambda e: iterations.append(e.state.iteration))
    resumed.run()
    assert iterations == [5, 6], "resume must continue at the saved iteration"
    for key in ("model", "teacher"):
        assert saved[key].keys() == fresh[key].state_dict().keys()
    assert fresh["optimizer"].state_dict()["state"], "optimizer momentum buffers restored"
    assert fresh["rampup"].end == 0.1


def test_resume_loads_exact_tensors(loaders, tmp_path) -> None:
    trainer, objects = _mean_teacher_run(loaders, max_epochs=1, epoch_length=2)
    AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict=objects, save_final=True,
                          final_filename="checkpoint.pt").attach(trainer)
    trainer.run()
    _, fresh = _mean_teacher_run(loaders, max_epochs=1, epoch_length=2)
    Checkpoint.load_objects(fresh, torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    for a, b in zip(objects["model"].state_dict().values(), fresh["model"].state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(objects["teacher"].teacher.state_dict().values(), fresh["teacher"].teacher.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh["trainer"].state.iteration == 2
    assert fresh["lr_scheduler"].last_epoch == objects["lr_scheduler"].last_epoch == 0  # no LrScheduleHandler here


def test_missing_handler_gives_clear_error(loaders) -> None:
    net = tiny_unet()
    trainer = SemiSupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=loaders[0],
                                    unlabelled_data_loader=loaders[1], network=net,
                                    optimizer=torch.optim.SGD(net.parameters(), lr=0.01), method=MeanTeacherMethod())
    with pytest.raises(RuntimeError, match=r"reads engine.state.teacher, engine.state.consistency_weight, which "
                                           r"no handler sets: add semiseg.handlers.EMATeacher \(sets "
                                           r"engine.state.teacher\) to train#handlers; add semiseg.handlers.Consist"):
        trainer.run()


def test_method_needing_unlabelled_data_rejects_missing_or_empty_loader(loaders) -> None:
    net = tiny_unet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="needs unlabelled data"):
        SemiSupervisedTrainer("cpu", 1, loaders[0], net, opt, MeanTeacherMethod())
    with pytest.raises(ValueError, match="unlabelled data set is empty"):
        SemiSupervisedTrainer("cpu", 1, loaders[0], net, opt, MeanTeacherMethod(),
                              unlabelled_data_loader=DataLoader([], batch_size=1))


def test_supervised_runs_without_unlabelled(loaders) -> None:
    net = tiny_unet()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    trainer = SemiSupervisedTrainer("cpu", 1, loaders[0], net, opt, SupervisedMethod(), epoch_length=2)
    trainer.run()
    assert trainer.state.iteration == 2 and set(loss_terms(trainer.state.output)) == {"loss", "sup_loss"}
    assert trainer.networks == {"network": net} and trainer.optimizers == {"optimizer": opt}
    assert trainer.unlabelled is None and "unlabelled" not in trainer.state_dict()


class _NaNMethod(SupervisedMethod):
    def compute(self, engine, labelled, unlabelled):
        loss, out = super().compute(engine, labelled, unlabelled)
        return loss * float("nan"), out


def test_nan_loss_raises_before_the_update(loaders) -> None:
    from monai.data import MetaTensor

    items = labelled_items(n=1)
    items[0]["image"] = MetaTensor(items[0]["image"], meta={"filename_or_obj": "/data/case_007.nii.gz"})
    net = tiny_unet()
    before = [p.clone() for p in net.parameters()]
    trainer = SemiSupervisedTrainer("cpu", 1, DataLoader(items, batch_size=1), net,
                                    torch.optim.SGD(net.parameters(), lr=0.01), _NaNMethod())
    with pytest.raises(FloatingPointError, match=r"non-finite loss .* iteration 1 .*case_007\.nii\.gz"):
        trainer.run()
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_nan_policy_skip(loaders) -> None:
    net = tiny_unet()
    trainer = SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    _NaNMethod(), epoch_length=2, nan_policy="skip")
    trainer.run()
    assert trainer.state.iteration == 2
    with pytest.raises(ValueError, match="nan_policy"):
        SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                              SupervisedMethod(), nan_policy="ignore")
