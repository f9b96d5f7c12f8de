"""A plain reference-style training loop: the control the bundles' recipe is measured against.

The loop bodies of SSL4MIS ``train_fully_supervised_3D.py`` and ``train_mean_teacher_3D.py`` (Luo, SSL4MIS,
https://github.com/HiLab-git/SSL4MIS) written as one plain PyTorch loop, with none of semiseg's engine, handlers or
transforms, so that a difference between a bundle and this loop is a difference of recipe, not of method:

- data: the bundles' split of the same data set (``semiseg.data.load_datalist``: the first ``--budget`` training
  cases labelled, the last ``--num-val`` held out, the rest unlabelled; the test list for scoring), each volume read
  with nibabel, reoriented to RAS and normalised with a per-volume z-score ``(x - mean) / std``;
- batches: the labelled crops (one per labelled case, ``--labelled-batch`` of them) then ``--unlabelled-batch``
  unlabelled crops from a shuffled, endlessly repeated unlabelled list (SSL4MIS ``TwoStreamBatchSampler``); crops
  uniform at random (``RandomCrop``, zero-padded when the volume is smaller), a flip along each axis with
  probability 1/2, and with ``--rot90`` first a quarter turn ``k ~ U{0..3}`` in the plane of the first two axes
  (``RandomRotFlip``);
- loss: ``0.5 (CE + Dice)`` on the labelled crops, Dice on softmax probabilities summed over the batch, per class
  including the background, averaged over classes (SSL4MIS ``losses.DiceLoss``); Mean Teacher adds
  ``w(t) mean((softmax(s_u) - softmax(t_u))^2)`` with the teacher fed ``x_u + clamp(0.1 N(0, 1), -0.2, 0.2)`` and
  ``w(t) = 0.1 sigmoid_rampup(t // 150, T / 150)`` (Laine & Aila 2017), so the ramp spans the run;
- optimiser: SGD 0.01, momentum 0.9, weight decay 1e-4, learning rate ``0.01 (1 - t / T)^0.9`` after each step;
  EMA teacher ``alpha = min(1 - 1 / (t + 1), 0.99)`` on parameters, updated after each step, in train mode;
- network: the bundles' MONAI ``UNet`` (16-32-64-128, strides 2, one residual unit, instance norm, dropout 0.3);
- scoring: the final weights, MONAI ``sliding_window_inference`` (crop size, ``--overlap`` 0.5, ``--blend``
  constant), argmax, MONAI ``DiceMetric`` per foreground class on every test case.

    python scripts/reference_loop.py --method mean_teacher --seed 0 --iterations 1500 --out results/reference_loop

Writes ``<out>/<method>_seed<seed>.json``: per-case and mean Dice per class, the settings and the wall time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.metrics import DiceMetric
from monai.networks.nets import UNet

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "shared"))

from semiseg.data import load_datalist  # noqa: E402

CLASSES = ("organ", "lesion")


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t / L)^2)`` clipped at ``t = L`` (Laine & Aila, ICLR 2017; SSL4MIS ``ramps.sigmoid_rampup``)."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return float(math.exp(-5.0 * phase * phase))


def load_volume(path: str) -> np.ndarray:
    """A NIfTI volume in RAS orientation as float32, ``(X, Y, Z)``."""
    return np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj, dtype=np.float32)


def zscore(image: np.ndarray) -> np.ndarray:
    return (image - image.mean()) / max(float(image.std()), 1e-8)


def random_crop(arrays: list[np.ndarray], size: tuple[int, int, int], rng: np.random.Generator) -> list[np.ndarray]:
    """The same uniform random crop of every array, zero-padded (symmetrically) where a side is too short."""
    shape = arrays[0].shape
    pads = [(max(s - d, 0) // 2, max(s - d, 0) - max(s - d, 0) // 2) for d, s in zip(shape, size)]
    if any(p for pair in pads for p in pair):
        arrays = [np.pad(a, pads) for a in arrays]
        shape = arrays[0].shape
    start = [int(rng.integers(0, d - s + 1)) for d, s in zip(shape, size)]
    region = tuple(slice(b, b + s) for b, s in zip(start, size))
    return [a[region] for a in arrays]


def augment(arrays: list[np.ndarray], rng: np.random.Generator, rot90: bool) -> list[np.ndarray]:
    """A quarter turn in the first plane (``rot90``), then a flip along each axis with probability 1/2."""
    if rot90:
        k = int(rng.integers(0, 4))
        arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
    for axis in range(3):
        if rng.random() < 0.5:
            arrays = [np.flip(a, axis=axis) for a in arrays]
    return [np.ascontiguousarray(a) for a in arrays]


def ssl4mis_dice_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """SSL4MIS ``DiceLoss``: per class ``1 - (2 sum(p t) + 1e-5) / (sum p^2 + sum t^2 + 1e-5)`` over the batch,
    averaged over all classes (background included)."""
    onehot = F.one_hot(labels, probs.shape[1]).permute(0, 4, 1, 2, 3).float()
    losses = [1 - (2 * (probs[:, c] * onehot[:, c]).sum() + 1e-5)
              / ((probs[:, c] ** 2).sum() + (onehot[:, c] ** 2).sum() + 1e-5) for c in range(probs.shape[1])]
    return torch.stack(losses).mean()


def make_network(num_classes: int, dropout: float) -> torch.nn.Module:
    return UNet(spatial_dims=3, in_channels=1, out_channels=num_classes, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=1, norm="instance", dropout=dropout)


def train(args: argparse.Namespace, lists: dict, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The loop; returns the final student and a few training statistics."""
    rng = np.random.default_rng(args.seed)
    labelled = [(zscore(load_volume(i["image"])), load_volume(i["label"]).astype(np.int64)) for i in lists["labelled"]]
    unlabelled = [zscore(load_volume(i["image"])) for i in lists["unlabelled"]]
    roi = tuple(args.roi)
    model = make_network(args.num_classes, args.dropout).to(device)
    teacher = None
    if args.method == "mean_teacher":
        teacher = make_network(args.num_classes, args.dropout).to(device)
        for param in teacher.parameters():
            param.detach_()
    optimiser = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    model.train()
    if teacher is not None:
        teacher.train()
    order: list[int] = []
    losses = []
    for iteration in range(args.iterations):
        cases = [labelled[int(j)] for j in rng.permutation(len(labelled))[: args.labelled_batch]]
        crops = [augment(random_crop([img, lab], roi, rng), rng, args.rot90) for img, lab in cases]
        x_l = torch.from_numpy(np.stack([c[0] for c in crops])[:, None]).to(device)
        y_l = torch.from_numpy(np.stack([c[1] for c in crops])).to(device)
        x = x_l
        if teacher is not None:
            picked = []
            for _ in range(args.unlabelled_batch):
                if not order:
                    order = [int(j) for j in rng.permutation(len(unlabelled))]
                picked.append(order.pop())
            u_crops = [augment(random_crop([unlabelled[j]], roi, rng), rng, args.rot90)[0] for j in picked]
            x_u = torch.from_numpy(np.stack(u_crops)[:, None]).to(device)
            x = torch.cat([x_l, x_u])
        logits = model(x)
        probs = torch.softmax(logits, dim=1)
        n = x_l.shape[0]
        loss = 0.5 * (F.cross_entropy(logits[:n], y_l) + ssl4mis_dice_loss(probs[:n], y_l))
        if teacher is not None:
            noise = torch.clamp(torch.randn_like(x_u) * 0.1, -0.2, 0.2)
            with torch.no_grad():
                teacher_probs = torch.softmax(teacher(x_u + noise), dim=1)
            weight = 0.1 * sigmoid_rampup(iteration // 150, args.iterations / 150)
            loss = loss + weight * torch.mean((probs[n:] - teacher_probs) ** 2)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if teacher is not None:
            alpha = min(1 - 1 / (iteration + 1), 0.99)
            with torch.no_grad():
                for t_param, s_param in zip(teacher.parameters(), model.parameters()):
                    t_param.mul_(alpha).add_(s_param, alpha=1 - alpha)
        for group in optimiser.param_groups:
            group["lr"] = args.lr * (1.0 - (iteration + 1) / args.iterations) ** 0.9
        losses.append(loss.item())
        if (iteration + 1) % 250 == 0:
            print(f"{args.method} seed {args.seed}: iteration {iteration + 1}/{args.iterations}, "
                  f"loss {np.mean(losses[-250:]):.4f}", flush=True)
    return model, {"final_loss_mean_last_100": float(np.mean(losses[-100:]))}


@torch.no_grad()
def score(model: torch.nn.Module, items: list[dict], args: argparse.Namespace, device: torch.device) -> dict:
    """Dice per foreground class on every item, with MONAI's sliding window and ``DiceMetric``."""
    model.eval()
    metric = DiceMetric(include_background=False, reduction="none")
    cases = []
    for item in items:
        image = torch.from_numpy(zscore(load_volume(item["image"])))[None, None].to(device)
        label = torch.from_numpy(load_volume(item["label"]).astype(np.int64))[None, None].to(device)
        logits = sliding_window_inference(image, tuple(args.roi), sw_batch_size=4, predictor=model,
                                          overlap=args.overlap, mode=args.blend)
        pred = logits.argmax(1, keepdim=True)
        onehot = [F.one_hot(t[:, 0], args.num_classes).permute(0, 4, 1, 2, 3) for t in (pred, label)]
        dice = metric(onehot[0], onehot[1])[0].tolist()
        cases.append({"image": Path(item["image"]).name, **dict(zip(CLASSES, dice))})
    means = {c: float(np.nanmean([case[c] for case in cases])) for c in CLASSES}
    means["mean"] = float(np.mean([means[c] for c in CLASSES]))
    return {"dice": means, "cases": cases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("supervised", "mean_teacher"), default="supervised")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "demo")
    parser.add_argument("--budget", type=int, default=2, help="labelled cases (the first ones, as the bundles)")
    parser.add_argument("--num-val", type=int, default=2, help="validation cases held out (unused, as the bundles)")
    parser.add_argument("--roi", type=int, nargs=3, default=[48, 48, 48])
    parser.add_argument("--labelled-batch", type=int, default=2)
    parser.add_argument("--unlabelled-batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--rot90", action="store_true", help="RandomRotFlip's quarter turn before the flips")
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--blend", choices=("constant", "gaussian"), default="constant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "reference_loop")
    args = parser.parse_args()
    if not (args.data / "dataset.json").is_file():
        parser.error(f"--data {args.data}: no dataset.json (make the demo with `python scripts/make_demo_data.py`)")
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    lists = load_datalist(args.data, num_labelled=args.budget, num_val=args.num_val, num_classes=args.num_classes,
                          require_unlabelled=args.method == "mean_teacher")
    start = time.time()
    model, stats = train(args, lists, device)
    train_s = time.time() - start
    result = {"method": args.method, "seed": args.seed, "command": " ".join(["python", *sys.argv]),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "train_s": round(train_s, 1), **stats, **score(model, lists["test"], args, device)}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.method}_seed{args.seed}.json"
    out.write_text(json.dumps(result, indent=2))
    dice = result["dice"]
    print(f"{args.method} seed {args.seed}: Dice mean {100 * dice['mean']:.1f} (organ {100 * dice['organ']:.1f}, "
          f"lesion {100 * dice['lesion']:.1f}) in {train_s:.0f} s -> {out}", flush=True)


if __name__ == "__main__":
    main()
