"""The app's working copies of the repository's bundles: configs from the repository, weights kept per copy."""

from __future__ import annotations

import filecmp
import logging
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

COPIED = ("configs", "docs", "LICENSE")  # what a work copy takes from bundles/<name>; models/ and eval/ are its own
WEIGHTS = "models/model.pt"


def bundle_names(bundles_dir: Path, wanted: str = "") -> list[str]:
    """The bundles to serve: every ``bundles/<name>`` with ``configs/train.json`` and ``configs/inference.json``,
    or the comma-separated ``wanted`` ones.

    Raises:
        ValueError: for a wanted name that is not such a bundle, or when there is none.
    """
    found = sorted(
        p.name for p in bundles_dir.iterdir()
        if (p / "configs" / "train.json").is_file() and (p / "configs" / "inference.json").is_file()
    )
    names = [n.strip() for n in wanted.split(",") if n.strip()] if wanted else found
    unknown = sorted(set(names) - set(found))
    if unknown or not names:
        raise ValueError(f"bundles {unknown or '(none)'} not found under {bundles_dir}; available: {found}.")
    return names


def _sync(src: Path, dst: Path) -> None:
    if src.is_dir():
        for child in src.iterdir():
            _sync(child, dst / child.name)
    elif not dst.is_file() or not filecmp.cmp(src, dst, shallow=False):
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def prepare(bundles_dir: Path, work_dir: Path, name: str) -> Path:
    """Bring ``work_dir/name`` up to date with ``bundles_dir/name`` and return it.

    Configs, docs and the licence are copied when they differ (so ``make configs`` reaches a running app's next
    start); ``models/`` belongs to the work copy (MONAI Label trains into it), seeded once from the repository
    bundle's ``models/model.pt`` when that exists (e.g. after ``make demo``).
    """
    src, dst = bundles_dir / name, work_dir / name
    for rel in COPIED:
        if (src / rel).exists():
            _sync(src / rel, dst / rel)
    if not (dst / WEIGHTS).is_file() and (src / WEIGHTS).is_file():
        (dst / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / WEIGHTS, dst / WEIGHTS)
        logger.info(f"{name}: initial weights from {src / WEIGHTS}")
    (dst / "models").mkdir(parents=True, exist_ok=True)
    return dst
