"""semiseg.errors: a failed bundle run reports its semiseg error in one line first, the traceback only on request."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from semiseg.data import DataValidationError, load_datalist
from semiseg.errors import SemisegError, SettingError, excepthook, format_user_error, install_excepthook, user_error
from tests.bundles.conftest import REPO

HINT = "(SEMISEG_TRACEBACK=1 prints the traceback)"


def _raise(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def _monai_wrapped(inner: BaseException) -> BaseException:
    """What MONAI raises around a failing config expression."""
    return _raise(RuntimeError("Failed to evaluate ConfigExpression: ..."), _raise(inner))


def _data_error(tmp_path: Path) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        load_datalist(tmp_path / "nowhere")
    return info.value


def test_finds_the_semiseg_error_under_monai_wrappers(tmp_path: Path) -> None:
    setting = SettingError("setting max_iterations must be an integer >= 1, got 0")
    assert user_error(_monai_wrapped(setting)) is setting
    data = _data_error(tmp_path)  # a ValueError raised by semiseg code
    wrapped = _raise(RuntimeError("outer"), _monai_wrapped(data))
    assert user_error(wrapped) is data


def test_library_errors_and_bugs_keep_their_traceback() -> None:
    assert user_error(_monai_wrapped(ValueError("raised outside semiseg"))) is None
    assert user_error(_monai_wrapped(ZeroDivisionError("integer division or modulo by zero"))) is None
    assert user_error(_raise(KeyboardInterrupt())) is None


def test_implicit_context_counts_unless_suppressed() -> None:
    inner = SettingError("bad")
    try:
        try:
            raise inner
        except SettingError:
            raise RuntimeError("while handling") from None
    except RuntimeError as suppressed:
        assert user_error(suppressed) is None
    try:
        try:
            raise inner
        except SettingError:
            raise RuntimeError("while handling")  # noqa: B904 - the implicit context is what is tested
    except RuntimeError as implicit:
        assert user_error(implicit) is inner


def test_one_line_first_then_the_other_problems() -> None:
    assert format_user_error(SettingError("setting x must be 1")) == f"semiseg: error: setting x must be 1 {HINT}\n"
    report = format_user_error(DataValidationError(["image a.nii.gz is truncated", "label b.nii.gz is empty"]))
    assert report.splitlines() == [
        f"semiseg: error: image a.nii.gz is truncated (and 1 more problem, listed below) {HINT}",
        "  - label b.nii.gz is empty",
    ]
    three = SemisegError(["a", "b", "c"])
    assert str(three).startswith("3 problems:") and "(and 2 more problems, listed below)" in format_user_error(three)
    with pytest.raises(ValueError, match="needs at least one problem"):
        SemisegError([])


def test_hook_prints_the_line_or_falls_back(capsys: pytest.CaptureFixture[str]) -> None:
    seen = []
    exc = _monai_wrapped(SettingError("setting x must be 1"))
    excepthook(type(exc), exc, exc.__traceback__, fallback=lambda *args: seen.append(args))
    assert capsys.readouterr().err == f"semiseg: error: setting x must be 1 {HINT}\n" and not seen
    other = _raise(RuntimeError("a bug"))
    excepthook(type(other), other, other.__traceback__, fallback=lambda *args: seen.append(args))
    assert seen and seen[0][1] is other and capsys.readouterr().err == ""


def test_install_keeps_someone_elses_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    def custom(*args: object) -> None: ...

    monkeypatch.setattr(sys, "excepthook", custom)
    install_excepthook()
    assert sys.excepthook is custom
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    install_excepthook()
    assert sys.excepthook is excepthook


SCRIPT = textwrap.dedent(
    """
    import semiseg
    from semiseg.errors import SettingError

    def evaluate():  # like MONAI's ConfigExpression.evaluate
        try:
            raise SettingError("setting max_iterations must be an integer >= 1, got 0")
        except Exception as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e

    evaluate()
    """
)


@pytest.mark.parametrize("traceback", [False, True], ids=["default", "SEMISEG_TRACEBACK=1"])
def test_a_process_ending_in_a_semiseg_error_prints_one_line_first(traceback: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SEMISEG_TRACEBACK"}
    if traceback:
        env["SEMISEG_TRACEBACK"] = "1"
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == f"semiseg: error: setting max_iterations must be an integer >= 1, got 0 {HINT}"
    assert ("Traceback (most recent call last):" in done.stderr) == traceback
    if traceback:
        assert "RuntimeError: Failed to evaluate ConfigExpression" in done.stderr
    else:
        assert len(lines) == 1


def test_other_errors_keep_pythons_report() -> None:
    done = subprocess.run([sys.executable, "-c", "import semiseg\nraise ValueError('not ours')"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "semiseg: error" not in done.stderr
    assert done.stderr.rstrip().endswith("ValueError: not ours")
