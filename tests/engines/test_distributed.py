"""The trainer under DistributedDataParallel (gloo, 2 CPU processes), as multi_gpu_train.json runs it on GPUs:
DDP-wrapped student (and extra trainable parts), DistributedSamplers on both loaders, EMA teacher on the unwrapped
module. One spawn runs every scenario (starting a process and importing MONAI costs more than the runs)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loaders() -> tuple[DataLoader, DataLoader]:
    from tests.helpers import labelled_items, unlabelled_items

    labelled, unlabelled = labelled_items(n=4), unlabelled_items(n=4)
    return (DataLoader(labelled, batch_size=1, sampler=DistributedSampler(labelled)),
            DataLoader(unlabelled, batch_size=1, sampler=DistributedSampler(unlabelled)))


def _mean_teacher(rank: int, out: Path) -> None:
    from semiseg.engines import SemiSupervisedTrainer
    from semiseg.handlers import AtomicCheckpointSaver, ConsistencyRampUp, EMATeacher
    from semiseg.methods import MeanTeacherMethod
    from tests.helpers import tiny_unet

    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(tiny_unet())
    labelled, unlabelled = _loaders()
    ema = EMATeacher(net)
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=2, epoch_length=2, train_data_loader=labelled, unlabelled_data_loader=unlabelled,
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=MeanTeacherMethod(),
        train_handlers=[ema, ConsistencyRampUp(every=1, length=2)],
    )
    for saver in (  # each rank gets its own folder: only rank 0's may hold files
        AtomicCheckpointSaver(save_dir=str(out / f"models_rank{rank}"), save_dict={"model": net}, save_final=True,
                              final_filename="model.pt"),
        AtomicCheckpointSaver(save_dir=str(out / f"models_rank{rank}"), save_dict={"model": net, "trainer": trainer},
                              save_final=True, final_filename="checkpoint.pt", save_interval=1,
                              interval_filename="checkpoint.pt", n_saved=1, save_on_error=True),
    ):
        saver.attach(trainer)
    trainer.run()
    torch.save({"teacher": ema.teacher.state_dict(), "iteration": trainer.state.iteration,
                "unlabelled_epochs": trainer.unlabelled.epoch}, out / f"rank{rank}.pt")


def _toy_critic(rank: int, out: Path) -> None:
    from semiseg.engines import SemiSupervisedTrainer
    from semiseg.handlers import RampScheduler
    from tests.helpers import tiny_unet
    from tests.toy_method import CRITIC_WEIGHT, ToyCritic, ToyCriticMethod

    torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts them from rank 0)
    net = torch.nn.parallel.DistributedDataParallel(tiny_unet())
    critic = torch.nn.parallel.DistributedDataParallel(ToyCritic(in_channels=3))
    labelled, unlabelled = _loaders()
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=2, epoch_length=2, train_data_loader=labelled, unlabelled_data_loader=unlabelled,
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=ToyCriticMethod(),
        networks={"critic": critic}, optimizers={"critic": torch.optim.Adam(critic.parameters(), lr=1e-2)},
        train_handlers=[RampScheduler(CRITIC_WEIGHT, 0.1, 0.5, length=2, offset=1)],
    )
    initial = {"student": {k: v.clone() for k, v in net.module.state_dict().items()},
               "critic": {k: v.clone() for k, v in critic.module.state_dict().items()}}
    trainer.run()
    torch.save({"student": net.module.state_dict(), "critic": critic.module.state_dict(), "initial": initial,
                "iteration": trainer.state.iteration, "critic_updates": trainer.method.updates},
               out / f"toy_rank{rank}.pt")


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    _mean_teacher(rank, Path(out))
    _toy_critic(rank, Path(out))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return out


def test_two_process_ddp_mean_teacher(ddp_results: Path) -> None:
    r0, r1 = (torch.load(ddp_results / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] == 4
    assert r0["unlabelled_epochs"] == 1  # 2 unlabelled items per rank, 4 iterations -> cycled twice (epoch 0, 1)
    assert sorted(p.name for p in (ddp_results / "models_rank0").iterdir()) == ["checkpoint.pt", "model.pt"]
    assert not (ddp_results / "models_rank1").exists() or not any((ddp_results / "models_rank1").iterdir())
    for key, value in r0["teacher"].items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, r1["teacher"][key]), f"teachers diverged across ranks at {key}"


def test_two_process_ddp_toy_critic_keeps_both_networks_in_sync(ddp_results: Path) -> None:
    r0, r1 = (torch.load(ddp_results / f"toy_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] == 4 and r0["critic_updates"] == r1["critic_updates"] == 4
    for part in ("student", "critic"):
        params = [k for k, v in r0[part].items() if v.is_floating_point() and "running" not in k and k != "input_mean"]
        assert params, part
        for key in params:
            assert torch.allclose(r0[part][key], r1[part][key], atol=1e-6), f"{part} diverged across ranks at {key}"
        assert any(not torch.equal(r0[part][k], r0["initial"][part][k]) for k in params), f"{part} never trained"
    assert r0["critic"]["steps"] == r1["critic"]["steps"] == 8  # two critic forward passes per iteration
