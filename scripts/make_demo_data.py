#!/usr/bin/env python
"""Generates the embedded demo data set (deterministic 3D phantom, NIfTI + MSD-style ``dataset.json``).

Usage (from any directory)::

    python scripts/make_demo_data.py                     # -> <repo>/data/demo, 20 training + 8 test cases, 64^3
    python scripts/make_demo_data.py --out-dir /tmp/demo --seed 1 --overwrite
    python scripts/make_demo_data.py --scenario two_site # -> <repo>/data/demo_two_site (+ data/demo_two_site_oracle)

An existing complete data set made with the same parameters is kept unless ``--overwrite`` is given.
See docs/data.md for what the phantom contains and how it was calibrated.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from semiseg.data.demo import SCENARIOS, make_demo_dataset, make_two_site_dataset

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "demo"
SCENARIO_DIRS = {"default": DEFAULT_OUT_DIR, "two_site": REPO_ROOT / "data" / "demo_two_site"}


def _split_summary(root: pathlib.Path, name: str, entries: list[dict[str, str]]) -> str:
    """One line: case count, shape, and mean organ/lesion voxel counts and lesion components of a split."""
    if not entries:
        return f"{name}: 0 cases"
    organ, lesion = [], []
    shape: tuple[int, ...] = ()
    for entry in entries:
        label = np.asarray(nib.load(str(root / entry["label"])).dataobj)
        shape = label.shape
        counts = np.bincount(label.ravel(), minlength=3)
        organ.append(int(counts[1]))
        lesion.append(int(counts[2]))
    return (
        f"{name}: {len(entries)} cases, shape {shape}, organ voxels {np.mean(organ):.0f} "
        f"[{min(organ)}..{max(organ)}], lesion voxels {np.mean(lesion):.0f} [{min(lesion)}..{max(lesion)}]"
    )


def _site_picture(root: pathlib.Path, cases: list[tuple[str, dict[str, str]]], path: pathlib.Path) -> pathlib.Path:
    """One column per case: the axial slice with the most lesion voxels (the image, then its label)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(cases), figsize=(3 * len(cases), 6.2), squeeze=False)
    for column, (title, entry) in enumerate(cases):
        image = nib.load(str(root / entry["image"]))
        label = np.asarray(nib.load(str(root / entry["label"])).dataobj)
        z = int(np.argmax((label == 2).sum(axis=(0, 1))))
        axes[0, column].imshow(np.asarray(image.dataobj)[:, :, z].T, cmap="gray", origin="lower")
        axes[0, column].set_title(f"{title}\n{pathlib.Path(entry['image']).name}, "
                                  f"{float(image.header.get_zooms()[0]):.2f} mm", fontsize=9)
        axes[1, column].imshow(label[:, :, z].T, cmap="viridis", vmin=0, vmax=2, origin="lower",
                               interpolation="nearest")
        axes[1, column].set_title("label: organ (teal), lesion (yellow)", fontsize=8)
        for row in range(2):
            axes[row, column].axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Parses arguments, generates the data set and prints what it wrote; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=SCENARIOS, default="default",
                        help="default: one site, a narrow labelled protocol (docs/data.md); two_site: labels from site "
                             "A, unlabelled and test images from site B, plus a calibration-only oracle folder")
    parser.add_argument("--out-dir", type=pathlib.Path, default=None,
                        help=f"default {DEFAULT_OUT_DIR} (two_site: {SCENARIO_DIRS['two_site']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=20)
    parser.add_argument("--num-reference", type=int, default=4, help="first training cases on the reference protocol")
    parser.add_argument("--num-test", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if a complete data set exists")
    parser.add_argument("--picture", type=pathlib.Path, default=None,
                        help="two_site: also write a PNG of both sites' first cases (docs/figures/two_site.png)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or SCENARIO_DIRS[args.scenario]

    t0 = time.perf_counter()
    if args.scenario == "two_site":
        json_path = make_two_site_dataset(out_dir, seed=args.seed, num_test=args.num_test, shape=tuple(args.shape),
                                          overwrite=args.overwrite)
        meta = json.loads(json_path.read_text())
        oracle = out_dir.with_name(out_dir.name + "_oracle")
        oracle_meta = json.loads((oracle / "dataset.json").read_text())
        print(f"two_site scenario ready: {json_path} ({time.perf_counter() - t0:.1f} s; a complete one with the "
              "same parameters is reused)")
        print("  " + _split_summary(out_dir, "training (site A: labelled, then validation)", meta["training"]))
        print(f"  unlabeled (site B): {len(meta['unlabeled'])} images")
        print("  " + _split_summary(out_dir, "test (site B)", meta["test"]))
        print(f"  oracle for calibration only: {oracle / 'dataset.json'} ({len(oracle_meta['training'])} labelled "
              "site-B training cases, the same site-B test cases)")
        if args.picture is not None:
            cases = [("site A, labelled", e) for e in meta["training"][:2]] + [
                ("site B, test", e) for e in meta["test"][:2]]
            print(f"  picture: {_site_picture(out_dir, cases, args.picture)}")
        return 0
    json_path = make_demo_dataset(
        out_dir,
        seed=args.seed,
        num_train=args.num_train,
        num_reference=args.num_reference,
        num_test=args.num_test,
        shape=tuple(args.shape),
        overwrite=args.overwrite,
    )
    elapsed = time.perf_counter() - t0
    meta = json.loads(json_path.read_text())
    root = json_path.parent
    print(f"demo data set ready: {json_path} ({elapsed:.1f} s; a complete one with the same parameters is reused)")
    print(f"  labels {meta['labels']}, spacing {meta['spacing_mm']} mm, generator {meta['generator']}")
    ref = meta["numReference"]
    print("  " + _split_summary(root, f"training (reference protocol, first {ref})", meta["training"][:ref]))
    print("  " + _split_summary(root, "training (full protocol)", meta["training"][ref:]))
    print("  " + _split_summary(root, "test (full protocol)", meta["test"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
