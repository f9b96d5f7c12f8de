"""The trainer under DistributedDataParallel (gloo, 2 CPU processes), as multi_gpu_train.json runs it on GPUs:
DDP-wrapped student, DistributedSamplers on both loaders, EMA teacher on the unwrapped module."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    from semiseg.engines import SemiSupervisedTrainer
    from semiseg.handlers import ConsistencyRampUp, EMATeacher
    from semiseg.methods import MeanTeacherMethod
    from tests.helpers import labelled_items, tiny_unet, unlabelled_items

    torch.manual_seed(0)
    net = torch.nn.parallel.DistributedDataParallel(tiny_unet())
    labelled, unlabelled = labelled_items(n=4), unlabelled_items(n=4)
    ema = EMATeacher(net)
    trainer = SemiSupervisedTrainer(
        device="cpu", max_epochs=2, epoch_length=2,
        train_data_loader=DataLoader(labelled, batch_size=1, sampler=DistributedSampler(labelled)),
        unlabelled_data_loader=DataLoader(unlabelled, batch_size=1, sampler=DistributedSampler(unlabelled)),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1), method=MeanTeacherMethod(),
        train_handlers=[ema, ConsistencyRampUp(every=1, length=2)],
    )
    trainer.run()
    torch.save({"teacher": ema.teacher.state_dict(), "iteration": trainer.state.iteration,
                "unlabelled_epochs": trainer.unlabelled.epoch}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_two_process_ddp_mean_teacher(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["iteration"] == r1["iteration"] == 4
    assert r0["unlabelled_epochs"] == 1  # 2 unlabelled items per rank, 4 iterations -> cycled twice (epoch 0, 1)
    for key, value in r0["teacher"].items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, r1["teacher"][key]), f"teachers diverged across ranks at {key}"
