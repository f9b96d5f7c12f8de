"""A small demo data set shared by the bundle smoke tests (32^3 volumes, generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from semiseg.bundle_config import bundle_dirs
from semiseg.data.demo import make_demo_dataset

REPO = Path(__file__).resolve().parents[2]
BUNDLES = tuple(d.name for d in bundle_dirs(REPO / "bundles"))  # every bundle generated from an overlay


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, seed=3, num_train=4, num_reference=2, num_test=2, shape=(32, 32, 32))
    return out


def config(bundle: str, name: str) -> str:
    return str(REPO / "bundles" / bundle / "configs" / name)
