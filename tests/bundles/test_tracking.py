"""Experiment tracking and progress bars of a bundle run (docs/architecture.md §5).

TensorBoard is on by default (``train#handlers``); ``--tracking mlflow`` adds MONAI's ``MLFlowHandler`` with a local
store, a SQLite file (MONAI 1.6.1's default ``<output_dir>/mlruns.db``, or ``--tracking_uri sqlite:///PATH``; MONAI
1.6.1 refuses ``file://`` folder stores, which MLflow >= 3.13 no longer supports). The progress bar is Ignite's
``ProgressBar``, attached only in a terminal.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from ignite.engine import Engine, Events
from monai.bundle import run

from semiseg.bundle_checks import check_settings
from semiseg.errors import SettingError
from semiseg.handlers import TerminalProgressBar
from semiseg.handlers.progress import progress_enabled
from tests.bundles.conftest import BUNDLES, bundle_overrides, config

mlflow = pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny (make install)")
BUNDLE = "mean_teacher" if "mean_teacher" in BUNDLES else BUNDLES[0]


def test_mlflow_tracking_with_a_local_store(tiny_demo: Path, tmp_path: Path) -> None:
    overrides = bundle_overrides(tiny_demo, tmp_path, max_iterations=2, iterations_per_epoch=2, val_interval=1)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"  # a local file; MONAI 1.6.1 refuses file:// folder stores
    run("training", config_file=config(BUNDLE, "train.json"), tracking="mlflow", tracking_uri=uri,
        experiment_name="semiseg-test", **overrides)

    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("semiseg-test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert "val_mean_dice" in runs[0].data.metrics  # the validator's metric, from its own MLflow handler
    for term in ("loss", "sup_loss"):  # every loss term (semiseg.handlers.track_loss_terms), every iteration
        assert [m.step for m in client.get_metric_history(runs[0].info.run_id, term)] == [1, 2], term
    # TensorBoard stays on next to MLflow
    assert list((tmp_path / "eval").glob("events.out.tfevents.*"))


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    ("setting", "stdout_tty", "stderr_tty", "expected"),
    [
        (None, True, True, True),  # auto: a terminal
        ("auto", True, False, False),  # stderr (where tqdm draws) piped to a log
        (None, False, True, False),  # stdout piped (CI, nohup)
        (True, False, False, True),  # forced
        ("TRUE", False, False, True),
        ("false", True, True, False),
        (False, True, True, False),
        ("no", True, True, False),
        (0, True, True, False),
        ("Yes", False, False, True),
    ],
)
def test_progress_bar_only_in_a_terminal_unless_forced(setting, stdout_tty, stderr_tty, expected) -> None:
    assert progress_enabled(setting, (_Stream(stdout_tty), _Stream(stderr_tty))) is expected


def test_progress_bar_attaches_to_an_engine(monkeypatch) -> None:
    pytest.importorskip("tqdm")
    engine = Engine(lambda e, b: None)
    bar = TerminalProgressBar(enabled=True, desc="inference", file=sys.stderr)
    bar.attach(engine)
    assert bar.bar is not None and engine.has_event_handler(bar.bar._close, Events.EPOCH_COMPLETED)
    engine.run([0, 1, 2], max_epochs=1)
    off = TerminalProgressBar(enabled=False)
    off.attach(Engine(lambda e, b: None))
    assert off.bar is None


def test_bad_progress_setting_names_the_setting() -> None:
    with pytest.raises(SettingError, match="setting progress must be true, false or auto"):
        TerminalProgressBar(enabled="sometimes")
    with pytest.raises(SettingError, match="setting progress must be true, false or auto"):
        check_settings(progress="sometimes")


def test_track_loss_terms_replaces_only_monais_default_transform(tmp_path: Path) -> None:
    from monai.handlers import MLFlowHandler, from_engine

    from semiseg.engines import loss_terms
    from semiseg.handlers import track_loss_terms

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    default = MLFlowHandler(tracking_uri=uri, output_transform=from_engine(["loss"], first=True))
    custom = MLFlowHandler(tracking_uri=uri, output_transform=lambda output: {"mine": 1.0})
    assert track_loss_terms([default, custom, object()]) == 1
    assert default.output_transform is loss_terms and custom.output_transform({}) == {"mine": 1.0}
    assert track_loss_terms(None) == 0
