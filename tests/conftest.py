"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from semiseg.data.demo import make_demo_dataset
from tests.helpers import labelled_items, unlabelled_items

torch.set_num_threads(2)


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    """(labelled, unlabelled) loaders of 16^3 volumes, batch 2 each."""
    return (
        DataLoader(labelled_items(), batch_size=2, shuffle=False),
        DataLoader(unlabelled_items(), batch_size=2, shuffle=False),
    )


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo data set (32^3 volumes, 4 training and 2 test cases), generated once per test session."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_dataset(out, seed=3, num_train=4, num_reference=2, num_test=2, shape=(32, 32, 32))
    return out
