"""``binarise_label``: any bundle trains and evaluates the demo as a binary task (foreground = every label > 0) with
its usual softmax over two classes, the comparison the bpl bundle's results are read against (docs/results.md)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import run

from semiseg.data.errors import DataValidationError
from tests.bundles.conftest import bundle_overrides, config

BINARY = {"binarise_label": True, "num_classes": 2, "class_names": ["background", "foreground"]}


def test_supervised_trains_and_evaluates_the_binary_task(tiny_demo: Path, tmp_path: Path) -> None:
    common = bundle_overrides(tiny_demo, tmp_path, **BINARY)
    run("training", config_file=config("supervised", "train.json"), max_iterations=2, iterations_per_epoch=2,
        val_interval=1, **common)
    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    last = [v for k, v in weights.items() if k.endswith(".weight")][-1]
    assert 2 in last.shape[:2]  # the output layer has two channels (background, foreground)

    run(config_file=[config("supervised", "train.json"), config("supervised", "evaluate.json")], **common)
    with open(tmp_path / "eval" / "dice_raw.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"filename", "class0", "mean"}  # one foreground class: organ and lesion merged


def test_without_binarise_label_two_classes_refuse_the_lesion_label(tiny_demo: Path, tmp_path: Path) -> None:
    """Label 2 (lesion) is outside a two-class task unless the labels are binarised: the data check names the file
    and the setting that merges the labels."""
    common = bundle_overrides(tiny_demo, tmp_path, num_classes=2, class_names=["background", "foreground"])
    with pytest.raises(RuntimeError) as err:  # MONAI's config error, raised from semiseg's data error
        run("training", config_file=config("supervised", "train.json"), max_iterations=1, iterations_per_epoch=1,
            **common)
    cause = err.value.__cause__
    assert isinstance(cause, DataValidationError), repr(err.value)
    assert re.search(r"labelsTr/case_\d+\.nii\.gz contains values \[2\] outside the class range 0\.\.1 "
                     r"\(num_classes 2; binarise_label true merges", str(cause)), str(cause)
