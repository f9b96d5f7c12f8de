"""Per-iteration cost of semiseg's Mean Teacher step against a reference-style loop, and of the EMA update.

(a) ``reference``: the SSL4MIS ``train_mean_teacher_3D.py`` step written as a plain PyTorch loop (concatenated
    student forward, noisy teacher forward, 0.5 (CE + Dice) + w * softmax MSE, SGD step, EMA with a Python loop
    over parameters ``ema.mul_(alpha).add_(param, alpha=1 - alpha)``).
(b) ``semiseg``: the same step through ``SemiSupervisedTrainer`` + ``MeanTeacherMethod`` + ``EMATeacher`` +
    ``ConsistencyRampUp`` (Ignite engine, events, fused ``torch._foreach`` EMA).
(c) EMA update alone: Python loop vs ``EMATeacher.update``.

Both (a) and (b) run in one process on the same in-memory batches, interleaved in rounds, so machine noise hits
both; the JSON reports medians and the ratio semiseg / reference (< 1 means semiseg is faster).

    python scripts/bench/bench_iteration.py --out results/bench/iteration.json [--device cuda] [--roi 96]
    python scripts/bench/bench_iteration.py --roi 16 --iterations 20 --rounds 3 --breakdown   # host overhead
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "shared"))

from semiseg.engines import SemiSupervisedTrainer  # noqa: E402
from semiseg.handlers import ConsistencyRampUp, EMATeacher  # noqa: E402
from semiseg.losses import ssl4mis_dice_ce  # noqa: E402
from semiseg.methods import MeanTeacherMethod  # noqa: E402


def _net(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(3, 1, 3, (16, 32, 64, 128), (2, 2, 2), num_res_units=1, norm="instance").to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _ssl4mis_dice(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(labels[:, 0], probs.shape[1]).permute(0, 4, 1, 2, 3).float()
    losses = [1 - (2 * (probs[:, c] * onehot[:, c]).sum() + 1e-5) /
              ((probs[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + 1e-5) for c in range(probs.shape[1])]
    return torch.stack(losses).mean()


def reference_ema_update(ema: torch.nn.Module, model: torch.nn.Module, it: int) -> None:
    """The research code's EMA teacher update after step ``it``, as written (``alpha = min(1 - 1/(it + 1), 0.99)``,
    parameter by parameter); shared by every reference-style loop of the benchmarks."""
    alpha = min(1 - 1 / (it + 1), 0.99)
    for ema_p, p in zip(ema.parameters(), model.parameters()):
        ema_p.data.mul_(alpha).add_(p.data, alpha=1 - alpha)


def reference_loop(batches, device: torch.device, iterations: int) -> list[float]:
    """The research code's step, as a plain loop; returns per-iteration seconds."""
    model, ema = _net(device), _net(device)
    for p in ema.parameters():
        p.detach_()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    times = []
    for it in range(iterations):
        (x_l, y_l), x_u = batches[it % len(batches)]
        _sync(device)
        start = time.perf_counter()
        model.train()
        volume = torch.cat([x_l, x_u])
        noise = torch.clamp(torch.randn_like(x_u) * 0.1, -0.2, 0.2)
        outputs = model(volume)
        soft = torch.softmax(outputs, dim=1)
        with torch.no_grad():
            ema_soft = torch.softmax(ema(x_u + noise), dim=1)
        n = x_l.shape[0]
        sup = 0.5 * (F.cross_entropy(outputs[:n], y_l[:, 0]) + _ssl4mis_dice(soft[:n], y_l))
        loss = sup + 0.1 * torch.mean((soft[n:] - ema_soft) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        reference_ema_update(ema, model, it)
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def semiseg_loop(batches, device: torch.device, iterations: int) -> list[float]:
    """The same step through semiseg's trainer; returns per-iteration seconds."""
    net = _net(device)
    labelled = [{"image": x, "label": y} for (x, y), _ in batches]
    unlabelled = [{"image": u} for _, u in batches]
    collate = lambda items: items[0]  # noqa: E731  (batches are pre-built on the device)
    trainer = SemiSupervisedTrainer(
        device=device, max_epochs=1, epoch_length=iterations,
        train_data_loader=DataLoader(labelled, batch_size=1, collate_fn=collate),
        unlabelled_data_loader=DataLoader(unlabelled, batch_size=1, collate_fn=collate),
        network=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        method=MeanTeacherMethod(supervised_loss=ssl4mis_dice_ce()),
        train_handlers=[EMATeacher(net), ConsistencyRampUp()],
    )
    times: list[float] = []
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: (_sync(device), times.append(-time.perf_counter())))
    trainer.add_event_handler(Events.ITERATION_COMPLETED,
                              lambda e: (_sync(device), times.__setitem__(-1, times[-1] + time.perf_counter())))
    trainer.run()
    return times


def ema_bench(device: torch.device, repeats: int) -> dict[str, float]:
    student, teacher = _net(device), _net(device)
    loop, fused = [], []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            for t, s in zip(teacher.parameters(), student.parameters()):
                t.mul_(0.99).add_(s, alpha=0.01)
        _sync(device)
        loop.append(time.perf_counter() - start)
        start = time.perf_counter()
        EMATeacher.update(teacher, student, step=1000, decay=0.99)
        _sync(device)
        fused.append(time.perf_counter() - start)
    return {"python_loop_ms": 1e3 * statistics.median(loop), "foreach_ms": 1e3 * statistics.median(fused),
            "ratio_foreach_over_loop": statistics.median(fused) / statistics.median(loop)}


def _median_ms(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def breakdown(batches, device: torch.device, repeats: int) -> dict[str, float]:
    """Host-side parts of semiseg's step that the reference loop does differently, each timed alone (median ms).

    What the two loops share (the student and teacher passes, backward, the SGD step) is not listed; the rest of
    the measured difference is the engine's own: Ignite's loop and events, the data cycles, the method's plumbing.
    """
    from semiseg.handlers.checkpoint import abs_total
    from semiseg.modes import ensure_mode

    student, teacher = _net(device), _net(device)
    (x_l, y_l), x_u = batches[0]
    out = student(torch.cat([x_l, x_u]))
    n = x_l.shape[0]
    out.sum().backward()
    grads = [p.grad for p in student.parameters()]
    loss = ssl4mis_dice_ce()
    logits = out.detach()[:n].requires_grad_()
    parts = {
        "reference: model.train() once": _median_ms(lambda: student.train(), device, repeats),
        "semiseg: ensure_mode on student and teacher": _median_ms(
            lambda: (ensure_mode(student, True), ensure_mode(teacher, True)), device, repeats),
        "semiseg: non-finite check of loss and gradients (one sync), L1 norm": _median_ms(
            lambda: bool(torch.isfinite(logits.detach().sum() + abs_total(iter(grads), device))), device, repeats),
        "semiseg before: the same check with the max norm": _median_ms(lambda: bool(torch.isfinite(
            logits.detach().sum() + torch.stack(torch._foreach_norm(grads, math.inf)).sum())), device, repeats),
        "reference: EMA, Python loop": _median_ms(lambda: [
            t.data.mul_(0.99).add_(s.data, alpha=0.01) for t, s in zip(teacher.parameters(), student.parameters())],
            device, repeats),
        "semiseg: EMA, fused": _median_ms(lambda: EMATeacher.update(teacher, student, 1000, 0.99), device, repeats),
        "reference: 0.5 (CE + Dice) forward and backward": _median_ms(lambda: (0.5 * (
            F.cross_entropy(logits, y_l[:, 0]) + _ssl4mis_dice(torch.softmax(logits, 1), y_l))).backward(),
            device, repeats),
        "semiseg: DiceCELoss forward and backward": _median_ms(lambda: loss(logits, y_l).backward(), device, repeats),
    }
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--roi", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations per round and loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the host-side parts that differ between the two loops, each alone")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench" / "iteration.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    shape = (2, 1, args.roi, args.roi, args.roi)
    batches = [((torch.randn(shape, generator=gen).to(device), torch.randint(0, 3, shape, generator=gen).to(device)),
                torch.randn(shape, generator=gen).to(device)) for _ in range(4)]
    ref, ours = [], []
    for _ in range(args.rounds):  # interleave so drift hits both
        ref += reference_loop(batches, device, args.iterations + args.warmup)[args.warmup:]
        ours += semiseg_loop(batches, device, args.iterations + args.warmup)[args.warmup:]
    result = {
        "command": " ".join(sys.argv),
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "roi": args.roi, "batch": "2 labelled + 2 unlabelled",
        "reference_median_s": statistics.median(ref), "semiseg_median_s": statistics.median(ours),
        "ratio_semiseg_over_reference": statistics.median(ours) / statistics.median(ref),
        "ema_update": ema_bench(device, 50),
    }
    if args.breakdown:
        result["breakdown_ms"] = breakdown(batches, device, 100)
        result["difference_ms"] = 1e3 * (result["semiseg_median_s"] - result["reference_median_s"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
