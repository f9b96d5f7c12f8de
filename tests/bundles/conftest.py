"""A small demo data set shared by the bundle smoke tests (32^3 volumes, generated once per session)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from semiseg.bundle_config import bundle_dirs

REPO = Path(__file__).resolve().parents[2]
BUNDLES = tuple(d.name for d in bundle_dirs(REPO / "bundles"))  # every bundle generated from an overlay


def config(bundle: str, name: str) -> str:
    return str(REPO / "bundles" / bundle / "configs" / name)


def bundle_overrides(tiny_demo: Path, out: Path, **extra) -> dict:
    """Overrides that point a bundle at the tiny demo and keep everything it writes under ``out``."""
    return {
        "dataset_dir": str(tiny_demo),
        "output_dir": str(out / "eval"),
        "ckpt_dir": str(out / "models"),
        "num_labelled": 2,
        "num_val": 1,  # the tiny demo's 4 training cases: 2 labelled, 1 validation, 1 unlabelled
        "roi_size": [32, 32, 32],
        "num_workers": 0,
        "log_every": 1,
        **extra,
    }


def restore_fresh(configs: Sequence[str], overrides: dict, check_differs: Callable[[dict], bool] | None = None) -> dict:
    """Build ``checkpoint#objects`` afresh from the configs and restore them with the config's own
    ``checkpoint#loader`` (what ``--resume true`` runs); ``check_differs`` asserts the fresh state is not already
    the saved one."""
    parser = ConfigParser()
    parser.read_config(list(configs))
    parser.update(overrides)
    objects = parser.get_parsed_content("checkpoint#objects")
    if check_differs is not None:
        assert check_differs(objects), "fresh objects already equal the checkpoint: the round trip proves nothing"
    parser.get_parsed_content("checkpoint#loader")(objects["trainer"])
    return objects
