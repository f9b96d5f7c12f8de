"""ssl4mis_dice_ce equals 0.5 (CE + SSL4MIS Dice) (docs/architecture.md §3; SSL4MIS utils/losses.py::DiceLoss);
ClassWeightedDiceCELoss equals UGPCL's supervised loss (taovv/UGPCL codes/losses/losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg.losses import ClassWeightedDiceCELoss, ssl4mis_dice_ce


def _ssl4mis_dice(probs: torch.Tensor, labels: torch.Tensor, classes: range) -> torch.Tensor:
    """The reference formula, written out: 1 - (2 sum(s t) + 1e-5) / (sum s^2 + sum t^2 + 1e-5), mean over classes."""
    onehot = F.one_hot(labels[:, 0], probs.shape[1]).permute(0, 4, 1, 2, 3).float()
    losses = []
    for c in classes:
        s, t = probs[:, c], onehot[:, c]
        losses.append(1 - (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("include_background", [True, False])
def test_matches_reference_formula(include_background: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6, generator=gen)
    labels = torch.randint(0, 3, (2, 1, 6, 6, 6), generator=gen)
    classes = range(0 if include_background else 1, 3)
    expected = 0.5 * (_ssl4mis_dice(torch.softmax(logits, 1), labels, classes) + F.cross_entropy(logits, labels[:, 0]))
    got = ssl4mis_dice_ce(include_background=include_background)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_hand_computed_single_voxel_pair() -> None:
    # two voxels, two classes, logits 0 -> p = 0.5 everywhere; labels (0, 1)
    logits = torch.zeros(1, 2, 2, 1, 1)
    labels = torch.tensor([0, 1]).view(1, 1, 2, 1, 1)
    # per class: sum(s t) = 0.5, sum s^2 = 0.5, sum t^2 = 1 -> dice = 1 - (1 + 1e-5) / (1.5 + 1e-5); CE = ln 2
    dice = 1 - (1 + 1e-5) / (1.5 + 1e-5)
    expected = 0.5 * (dice + 0.6931471805599453)
    assert ssl4mis_dice_ce()(logits, labels).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("flag", "include_background"), [("false", False), ("False", False), ("true", True), (0, False)]
)
def test_the_command_lines_strings_are_read_as_booleans(flag: str | int, include_background: bool) -> None:
    """``--dice_include_background false`` reaches the loss as the string "false", which must not read as true."""
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(2, 3, 4, 4, 4, generator=gen), torch.randint(0, 3, (2, 1, 4, 4, 4), generator=gen)
    expected = ssl4mis_dice_ce(include_background=include_background)(logits, labels)
    assert ssl4mis_dice_ce(include_background=flag)(logits, labels).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="dice_include_background"):
        ssl4mis_dice_ce(include_background="maybe")


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.sin(torch.arange(2 * 3 * 4 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 4, 2) * 0.7) * 2.0
    labels = (torch.arange(2 * 4 * 4 * 2).reshape(2, 1, 4, 4, 2) % 3).float()
    labels[0, 0, :2] = 0
    return logits, labels


def test_class_weighted_dice_ce_equals_the_ugpcl_reference_on_fixed_inputs() -> None:
    # taovv/UGPCL@5980405 DiceLoss_(weight=0.5, n_classes=3, class_weight=[0, 1, 1]) + CrossEntropyLoss_(weight=0.5),
    # run on these inputs in a scratch folder: 0.20391468703746796 + 0.8698278665542603 = 1.0737425088882446
    logits, labels = _fixed_batch()
    loss = ClassWeightedDiceCELoss([0.0, 1.0, 1.0])(logits, labels)
    assert loss.item() == pytest.approx(1.0737425088882446, abs=1e-6)
    # the background is out of the Dice, but the sum is still divided by all 3 classes (the reference's n_classes)
    dice = _ssl4mis_dice(torch.softmax(logits, 1), labels.long(), range(1, 3)) * 2 / 3
    expected = 0.5 * dice + 0.5 * F.cross_entropy(logits, labels[:, 0].long())
    assert ClassWeightedDiceCELoss([0.0, 1.0, 1.0])(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # with all weights 1 it is ssl4mis_dice_ce
    assert ClassWeightedDiceCELoss([1.0, 1.0, 1.0])(logits, labels).item() == pytest.approx(
        ssl4mis_dice_ce()(logits, labels).item(), abs=1e-6)


def test_class_weighted_dice_ce_refuses_bad_weights() -> None:
    with pytest.raises(ValueError, match="one weight >= 0 per class"):
        ClassWeightedDiceCELoss([0.0, -1.0])
    with pytest.raises(ValueError, match="3 channels for 2 class weights"):
        ClassWeightedDiceCELoss([0.0, 1.0])(*_fixed_batch())
