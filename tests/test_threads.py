"""semiseg.threads: the CPU thread count of a bundle run (the template's ``num_threads`` setting)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import torch

from semiseg import threads
from semiseg.bundle_config import BUNDLES_DIR


@pytest.fixture(autouse=True)
def _keep_torch_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("default", "cores", "busy", "expected"),
    [(2, 2, 0.1, 2), (2, 2, 1.0, 1), (2, 2, 2.0, 1), (2, 2, 0.6, 1), (8, 8, 1.0, 7), (4, 8, 0.0, 4), (2, 2, None, 2)],
)
def test_one_thread_per_free_core_at_most_the_default(default: int, cores: int, busy: float | None,
                                                      expected: int) -> None:
    assert threads.choose_threads(default, cores, busy) == expected


def test_busy_cores_is_the_busy_share_of_all_cores_over_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([(100.0, 1000.0), (175.0, 1100.0)])  # 75 of 100 jiffies busy, on 2 cores: 1.5 cores busy
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: None)
    assert threads.busy_cores() == pytest.approx(1.5)
    monkeypatch.setattr(threads, "_cpu_times", lambda: None)
    assert threads.busy_cores() is None


def test_auto_takes_one_thread_per_free_core_and_says_how_to_set_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in threads.THREADS_ENV:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)  # one busy process beside the run
    with caplog.at_level(logging.INFO, logger="semiseg.threads"):
        assert threads.configure_threads(None, "cpu") == 1
    assert torch.get_num_threads() == 1
    (line,) = [r.getMessage() for r in caplog.records if r.name == "semiseg.threads"]
    assert "1 CPU thread(s)" in line and "--num_threads" in line and "\n" not in line


def test_an_explicit_setting_or_omp_num_threads_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "busy_cores", lambda: pytest.fail("measured although the count was chosen"))
    assert threads.configure_threads(2, "cpu") == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert threads.configure_threads(None, "cpu") == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    for name in threads.THREADS_ENV:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    assert threads.configure_threads(None, torch.device("cuda")) == 2  # on a GPU torch's default stays


@pytest.mark.parametrize("name", ["train.json", "evaluate.json"])
def test_every_training_and_evaluation_run_configures_its_threads_after_the_checks(name: str) -> None:
    for bundle in sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "overlay.json").is_file()):
        initialize = json.loads((BUNDLES_DIR / bundle / "configs" / name).read_text())["initialize"]
        assert initialize[1] == "$semiseg.threads.configure_threads(@num_threads, @device)", (bundle, name)
