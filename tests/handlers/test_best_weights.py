"""BestWeightsSaver: ``model_best.pt`` holds the weights of the best validation score, survives a resume, and is
never chosen on test cases (docs/architecture.md §2, "Checkpoints")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from semiseg.errors import SettingError
from semiseg.handlers import BEST_FILENAME, BestWeightsSaver, check_best_weights

TEST = [{"image": "/data/imagesTs/test_000.nii.gz", "label": "/data/labelsTs/test_000.nii.gz"}]
VALIDATION = [{"image": "/data/imagesTr/train_003.nii.gz", "label": "/data/labelsTr/train_003.nii.gz"}]


def _net() -> torch.nn.Linear:
    return torch.nn.Linear(2, 1)


def _validator(net: torch.nn.Module, scores: Sequence[float], data: list[dict] = VALIDATION, fill: int = 0) -> Engine:
    """An evaluator stand-in: validation ``k`` (one epoch) fills the network with ``fill + k`` and scores
    ``scores[k - 1]``."""
    engine = Engine(lambda e, b: None)
    engine.data_loader = SimpleNamespace(dataset=SimpleNamespace(data=data))

    @engine.on(Events.EPOCH_STARTED)
    def _set_weights(e: Engine) -> None:
        with torch.no_grad():
            for p in net.parameters():
                p.fill_(float(fill + e.state.epoch))

    @engine.on(Events.EPOCH_COMPLETED)
    def _score(e: Engine) -> None:  # registered before the saver, as the evaluator's metrics are
        e.state.key_metric_name = "val_mean_dice"
        e.state.metrics = {"val_mean_dice": scores[e.state.epoch - 1]}

    return engine


def _saver(tmp_path: Path, net: torch.nn.Module, enabled: bool | str = True) -> BestWeightsSaver:
    return BestWeightsSaver(str(tmp_path), {"model": net}, enabled=enabled, num_validation=1, test_data=TEST)


def _best_fill(tmp_path: Path) -> float:
    """Which validation's weights ``model_best.pt`` holds (the fill value)."""
    state = torch.load(tmp_path / BEST_FILENAME, weights_only=True)
    return float(state["weight"].flatten()[0])


def test_keeps_the_weights_of_the_highest_validation_score_first_of_equals(tmp_path: Path) -> None:
    net = _net()
    engine = _validator(net, [0.3, 0.7, 0.5, 0.7])
    saver = _saver(tmp_path, net)
    saver.attach(engine)
    engine.run([0], max_epochs=4)
    assert _best_fill(tmp_path) == 2.0  # the 2nd validation's 0.7; the 4th equals it and does not replace it
    assert saver.best_score == pytest.approx(0.7)
    assert set(torch.load(tmp_path / BEST_FILENAME, weights_only=True)) == {"weight", "bias"}  # a bare state dict


def test_a_nan_score_counts_as_the_lowest(tmp_path: Path) -> None:
    net = _net()
    engine = _validator(net, [math.nan, 0.2, math.nan])
    saver = _saver(tmp_path, net)
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    assert _best_fill(tmp_path) == 2.0 and saver.best_score == pytest.approx(0.2)


def test_a_resumed_run_compares_with_the_best_of_the_whole_run(tmp_path: Path) -> None:
    net = _net()
    first = _saver(tmp_path, net)
    engine = _validator(net, [0.3, 0.7])
    first.attach(engine)
    engine.run([0], max_epochs=2)
    state = first.state_dict()

    resumed = _saver(tmp_path, net)
    resumed.load_state_dict(state)
    engine = _validator(net, [0.6, 0.8], fill=10)  # the resumed run's validations: weights 11, 12
    resumed.attach(engine)
    engine.run([0], max_epochs=1)
    assert _best_fill(tmp_path) == 2.0  # 0.6 < 0.7: the first run's best stays
    engine.run([0], max_epochs=2)
    assert _best_fill(tmp_path) == 12.0 and resumed.best_score == pytest.approx(0.8)
    assert torch.load(_state_file(tmp_path, resumed), weights_only=True) == resumed.state_dict()


def _state_file(tmp_path: Path, saver: BestWeightsSaver) -> Path:
    """The saver's state as it goes into checkpoint.pt, written and read back with torch (weights_only)."""
    path = tmp_path / "state.pt"
    torch.save(saver.state_dict(), path)
    return path


@pytest.mark.parametrize("enabled", [False, "false"])
def test_disabled_attaches_nothing_and_writes_nothing(tmp_path: Path, enabled: bool | str) -> None:
    net = _net()
    engine = _validator(net, [0.5], data=TEST)  # not even refused: a disabled saver looks at nothing
    _saver(tmp_path, net, enabled=enabled).attach(engine)
    engine.run([0], max_epochs=1)
    assert not (tmp_path / BEST_FILENAME).exists()


def test_refuses_an_evaluator_that_reads_a_test_case(tmp_path: Path) -> None:
    """evaluate.json scores the test list with the same evaluator id: the weights must never be chosen there."""
    net = _net()
    engine = _validator(net, [0.9], data=VALIDATION + TEST)
    with pytest.raises(SettingError, match="model_best.pt would be chosen on test cases.*test_000"):
        _saver(tmp_path, net).attach(engine)
    assert not (tmp_path / BEST_FILENAME).exists()


def test_save_best_needs_validation_cases() -> None:
    with pytest.raises(SettingError, match=r"--save_best true.*no validation cases.*--num_val"):
        check_best_weights(True, 0)
    with pytest.raises(SettingError, match="num_val"):
        BestWeightsSaver("/nonexistent", {"model": _net()}, enabled="true", num_validation=0)
    assert check_best_weights("false", 0) is False and check_best_weights("true", 2) is True
    with pytest.raises(ValueError, match="save_best"):
        check_best_weights("sometimes", 2)
