"""Shared fixtures (helpers live in tests/helpers.py)."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import labelled_items, unlabelled_items

torch.set_num_threads(2)


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    """(labelled, unlabelled) loaders of 16^3 volumes, batch 2 each."""
    return (
        DataLoader(labelled_items(), batch_size=2, shuffle=False),
        DataLoader(unlabelled_items(), batch_size=2, shuffle=False),
    )
