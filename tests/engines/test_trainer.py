"""SemiSupervisedTrainer: a few iterations on tiny volumes, resume, and failure messages."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import Checkpoint
from monai.data import list_data_collate
from monai.handlers import CheckpointLoader
from torch.utils.data import DataLoader

from semiseg.engines import SemiSupervisedTrainer, loss_terms
from semiseg.engines.trainer import epoch_length_for
from semiseg.handlers import AtomicCheckpointSaver, ConsistencyRampUp, EMATeacher
from semiseg.methods import MeanTeacherMethod, SupervisedMethod
from tests.helpers import labelled_items, tiny_unet, unlabelled_items


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
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"], "atomic write left a temp file"

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


# the finite check covers the gradients ------------------------------------------------------------------------------


class _InfGrad(torch.autograd.Function):
    """Identity forward, non-finite backward: a finite loss whose gradients overflow."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


class _InfGradMethod(SupervisedMethod):
    requires_unlabelled = True  # draws an unlabelled batch, so the error can name its files

    def compute(self, engine, labelled, unlabelled):
        loss, out = super().compute(engine, labelled, unlabelled)
        return _InfGrad.apply(loss), out


def _named_items(items: list[dict], prefix: str) -> list[dict]:
    from monai.data import MetaTensor

    return [{**item, "image": MetaTensor(item["image"], meta={"filename_or_obj": f"/data/{prefix}_{i}.nii.gz"})}
            for i, item in enumerate(items)]


def test_non_finite_gradients_of_a_finite_loss_stop_before_the_step_and_name_both_batches() -> None:
    net = tiny_unet()
    before = [p.clone() for p in net.parameters()]
    labelled = DataLoader(_named_items(labelled_items(n=2), "lab"), batch_size=2, collate_fn=list_data_collate)
    unlabelled = DataLoader(_named_items(unlabelled_items(n=1), "unlab"), batch_size=1, collate_fn=list_data_collate)
    trainer = SemiSupervisedTrainer("cpu", 1, labelled, net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    _InfGradMethod(), unlabelled_data_loader=unlabelled)
    with pytest.raises(FloatingPointError) as info:
        trainer.run()
    message = str(info.value)
    assert "is finite but its gradients are not at iteration 1" in message
    assert "network.model.0.conv.weight" in message
    assert "labelled batch ['/data/lab_0.nii.gz', '/data/lab_1.nii.gz']" in message
    assert "unlabelled batch ['/data/unlab_0.nii.gz']" in message
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_nan_policy_skip_also_skips_non_finite_gradients(loaders) -> None:
    net = tiny_unet()
    before = [p.clone() for p in net.parameters()]
    trainer = SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    _InfGradMethod(), unlabelled_data_loader=loaders[1], epoch_length=2,
                                    nan_policy="skip")
    trainer.run()
    assert trainer.state.iteration == 2 and all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_metatensor_batches_reach_the_method_as_plain_tensors() -> None:
    seen: list[type] = []

    class Spy(SupervisedMethod):
        def compute(self, engine, labelled, unlabelled):
            seen.extend(type(t) for t in labelled)
            return super().compute(engine, labelled, unlabelled)

    net = tiny_unet()
    items = _named_items(labelled_items(n=2), "lab")
    trainer = SemiSupervisedTrainer("cpu", 1, DataLoader(items, batch_size=2, collate_fn=list_data_collate), net,
                                    torch.optim.SGD(net.parameters(), lr=0.01), Spy())
    trainer.run()
    assert seen == [torch.Tensor, torch.Tensor]


# budget, data cycles, resume ---------------------------------------------------------------------------------------


def test_epoch_length_for_runs_the_budget_exactly() -> None:
    assert [epoch_length_for(150, 100), epoch_length_for(6000, 100), epoch_length_for(3, 2), epoch_length_for(40, 100)
            ] == [75, 100, 1, 40]
    for total, per_epoch in [(150, 100), (6000, 100), (3, 2), (12, 5), (97, 10)]:
        length = epoch_length_for(total, per_epoch)
        assert (total // length) * length == total and length <= per_epoch
    with pytest.warns(UserWarning, match=r"max_iterations 6007 has no divisor between 50 and 100 .* 6000 or 6100"):
        assert epoch_length_for(6007, 100) == 1
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="bundle setting 'max_iterations' must be an integer >= 1"):
            epoch_length_for(bad, 100)
    with pytest.raises(ValueError, match="'iterations_per_epoch'"):
        epoch_length_for(100, 0)


def test_labelled_loader_cycles_independently_of_epochs_and_budget_is_epochs_times_length(loaders) -> None:
    net = tiny_unet()
    trainer = SemiSupervisedTrainer("cpu", 2, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    SupervisedMethod(), epoch_length=3)  # the labelled loader has 1 batch
    assert trainer.budget == 6
    trainer.run()
    assert trainer.state.iteration == 6 and trainer.labelled.state_dict()["epoch"] == 5


def test_last_good_iteration_is_none_only_while_an_update_is_applied(loaders) -> None:
    net = tiny_unet()
    trainer = SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                    SupervisedMethod(), epoch_length=2)
    seen: list[tuple[str, int | None]] = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(("started", e.last_good_iteration)))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(("completed", e.last_good_iteration)))
    assert trainer.last_good_iteration is None
    trainer.run()
    assert seen == [("started", 0), ("completed", None), ("started", 1), ("completed", None)]
    assert trainer.last_good_iteration == 2 and trainer.start_iteration == 0


def test_data_cycle_replays_a_shuffled_pass_and_the_transforms_draws_exactly() -> None:
    from monai.data import DataLoader as MonaiLoader
    from monai.data import Dataset
    from monai.transforms import RandSpatialCropSamplesd
    from monai.utils import set_determinism

    from semiseg.engines import UnlabelledCycle
    from semiseg.handlers.random_state import get_random_state, set_random_state

    def build() -> MonaiLoader:
        set_determinism(seed=0)
        data = [{"image": torch.full((1, 6, 6, 6), float(i))} for i in range(7)]
        crop = RandSpatialCropSamplesd(keys="image", roi_size=(2, 2, 2), num_samples=1, random_size=False)
        return MonaiLoader(Dataset(data, transform=crop), batch_size=2, shuffle=True, num_workers=0)

    def draw(cycle, n):
        return [next(cycle)["image"] for _ in range(n)]

    loader = build()
    cycle = UnlabelledCycle(loader)
    draw(cycle, 6)  # pass 0 (4 batches) and 2 batches of pass 1
    state, rng = cycle.state_dict(), get_random_state(loader)
    torch.rand(3)
    later = draw(cycle, 4)

    loader = build()
    resumed = UnlabelledCycle(loader)
    resumed.load_state_dict(state)
    set_random_state(rng, loader)
    torch.manual_seed(123)  # the global generator when the replay happens does not matter and is left as it is
    expected_after = torch.get_rng_state()
    replayed = draw(resumed, 2)
    assert all(torch.equal(a, b) for a, b in zip(replayed, later[:2]))  # same cases, same crops
    assert resumed.state_dict()["position"] == 4 and resumed.epoch == 1
    assert torch.equal(torch.get_rng_state(), expected_after)


def test_resume_with_another_epoch_length_runs_the_new_budget(loaders) -> None:
    net = tiny_unet()
    first = SemiSupervisedTrainer("cpu", 1, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                  SupervisedMethod(), epoch_length=4)
    first.run()
    state = first.state_dict()  # 4 iterations in epochs of 4 (max_iterations 4)
    second = SemiSupervisedTrainer("cpu", 2, loaders[0], net, torch.optim.SGD(net.parameters(), lr=0.01),
                                   SupervisedMethod(), epoch_length=5)  # resumed with max_iterations 10
    second.load_state_dict(state)
    second.state.max_epochs = 2  # as MONAI's CheckpointLoader does: the new run's max_epochs
    started: list[tuple[int, int]] = []
    second.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append((e.state.epoch, e.state.iteration)))
    second.run()
    assert second.state.epoch_length == 5 and second.budget == 10
    assert started == [(1, 5), (2, 6), (2, 7), (2, 8), (2, 9), (2, 10)]
