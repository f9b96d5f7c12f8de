"""MONAI Label end to end: the app in scripts/monailabel_app served by `monailabel start_server`.

Not collected by `make test` (the file name does not match `test_*.py`, and MONAI Label is not in the dev venv):
`make label-test` installs the `label` extra into its own venv (.venv-label, constraints-label.txt) and runs
`pytest tests/monailabel/monailabel_integration.py` there; CI runs it as its own step (.ci/run).

One server on a free port on 127.0.0.1 over a temporary studies folder (48^3 demo phantoms: 4 with a final label,
3 without) and a temporary work folder, in which every bundle gets random initial weights so each can infer:

- `/info/`: every bundle is a model and a trainer; the `uncertainty` strategy is listed;
- `/infer/<bundle>?image=<id>` for every bundle: the label is uint8 with the image's shape and class values only;
  the result JSON describes the entropy map, which the datastore serves under the tag `entropy` with the image's
  shape and values in [0, 1];
- `/activelearning/uncertainty`: returns the most uncertain unlabelled image, one inference pass per image, none
  on a second call (cache);
- `/train/mean_teacher` (one epoch of 10 iterations): the run's summary lists exactly MONAI Label's unlabelled
  images, its batches drew them, the budget is max_epochs x epoch_length, and the consistency ramp and learning
  rate reached the end of their schedules in that budget (not in the config's 6000 iterations);
- errors answered as a server does: 404 for an unknown image, model or strategy, 409 for a bundle without weights,
  422 for a bad parameter, each with its one-line `semiseg: error:` message as the body's `detail`; bad training
  parameters end the task before it reads any data, with that line last in `GET /train/`;
- stopping: SIGTERM to `start_server` alone stops it (uvicorn runs in that process) and frees the port; SIGTERM to
  `make label` alone stops the server it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "scripts" / "monailabel_app"
sys.path.insert(0, str(APP))
from make_studies import make_studies  # noqa: E402

BUNDLES = sorted(p.parent.parent.name for p in (REPO / "bundles").glob("*/configs/inference.json"))
NUM_LABELLED, NUM_UNLABELLED = 4, 3
ITERATIONS = 10  # one epoch, shorter than mean_teacher's 40 ramp steps: the steps are rescaled to the 10 iterations
START_TIMEOUT_S, TRAIN_TIMEOUT_S = 300, 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """Nothing listens on the port: a connection is refused and a listening socket can bind it (SO_REUSEADDR, as
    servers set it: the closed connections' TIME_WAIT entries do not count, a listener does)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen()
        except OSError:
            return False
    return True


class Server:
    """`monailabel start_server` in its own session (process group), so every child can be stopped."""

    def __init__(self, studies: Path, work: Path, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "monailabel.main", "start_server",
                   "--app", str(APP), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(self.port),
                   "--conf", "work_dir", str(work), "--conf", "device", "cpu"]
        env = {**os.environ, "OMP_NUM_THREADS": "2", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
               "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
        self.log = log
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 600) -> bytes:
        status, answer = self.answer(method, path, body, timeout)
        if status != 200:
            raise AssertionError(f"{method} {path}: HTTP {status}: {answer[:2000]!r}\n{self.tail()}")
        return answer

    def answer(self, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, bytes]:
        """The HTTP status and body of a request, whatever the status."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return json.loads(self.request(method, path, body))

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        return "server log (last lines):\n" + "\n".join(lines[-n:])

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"start_server exited with {self.process.returncode}\n{self.tail()}")
            try:
                self.request("GET", "/info/", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, AssertionError, TimeoutError):
                time.sleep(2)
        raise AssertionError(f"the server did not answer within {START_TIMEOUT_S} s\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to start_server alone; every process it started must end with it (else the group is killed)."""
        stop_group(self.process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to ``process`` alone (the leader of its own session), then wait up to 30 s for every process of its
    group to end; what outlives that is killed and fails the test."""
    pgid = process.pid  # start_new_session: the leader's pid is the group id
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _group_alive(pgid):
        process.poll()
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        raise AssertionError(f"processes of group {pgid} outlived SIGTERM to {pgid} by 30 s (killed)")
    process.wait(timeout=10)


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies of our own child do not count)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_for_training(server: Server, timeout_s: float) -> dict:
    """``GET /train/`` until the last task is DONE or ERROR (or the time is up); its last answer."""
    deadline = time.monotonic() + timeout_s
    status: dict = {}
    while time.monotonic() < deadline:
        status = server.json("GET", "/train/")
        if status["status"] in ("DONE", "ERROR"):
            break
        time.sleep(3)
    return status


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_studies(tmp_path_factory.mktemp("studies"), NUM_LABELLED, NUM_UNLABELLED, shape=(48, 48, 48), seed=5)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The app's work folder, with random initial weights for every bundle (so each can infer before training)."""
    folder = tmp_path_factory.mktemp("work")
    torch.manual_seed(0)
    for bundle in BUNDLES:
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles" / bundle / "configs" / "inference.json"))
        (folder / bundle / "models").mkdir(parents=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), folder / bundle / "models" / "model.pt")
    return folder


@pytest.fixture(scope="module")
def server(studies: Path, work: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(studies, work, tmp_path_factory.mktemp("log") / "server.log")
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
    assert port_is_free(srv.port), f"port {srv.port} still bound after stopping the server"


def _unlabelled(studies: Path) -> list[str]:
    labelled = {p.name for p in (studies / "labels" / "final").glob("*.nii.gz")}
    return sorted(p.name.removesuffix(".nii.gz") for p in studies.glob("*.nii.gz") if p.name not in labelled)


def test_info_lists_every_bundle(server: Server) -> None:
    info = server.json("GET", "/info/")
    assert set(info["models"]) == set(BUNDLES) and set(info["trainers"]) == set(BUNDLES)
    assert "uncertainty" in info["strategies"]
    assert info["trainers"]["mean_teacher"]["config"]["iterations_per_epoch"] == 100
    assert info["datastore"]["total"] == NUM_LABELLED + NUM_UNLABELLED


@pytest.mark.parametrize("bundle", BUNDLES)
def test_infer_returns_label_and_entropy_map(server: Server, studies: Path, tmp_path: Path, bundle: str) -> None:
    image_id = _unlabelled(studies)[0]
    shape = nib.load(studies / f"{image_id}.nii.gz").shape
    label_file = tmp_path / "label.nii.gz"
    label_file.write_bytes(server.request("POST", f"/infer/{bundle}?image={image_id}&output=image"))
    label = np.asarray(nib.load(label_file).dataobj)
    assert label.shape == shape and label.dtype == np.uint8  # as `monai.bundle run` writes it
    assert set(np.unique(label).tolist()) <= {0, 1, 2}

    params = server.json("POST", f"/infer/{bundle}?image={image_id}&output=json")
    entropy = params["uncertainty"]["entropy"]
    assert 0.0 <= entropy["mean"] <= entropy["max"] <= 1.0 + 1e-6 and entropy["label_tag"] == "entropy"
    entropy_file = tmp_path / "entropy.nii.gz"
    entropy_file.write_bytes(server.request("GET", f"/datastore/label?label={entropy['label_id']}&tag=entropy"))
    values = np.asarray(nib.load(entropy_file).dataobj)
    assert values.shape == shape and values.dtype == np.float32
    assert 0.0 <= values.min() and values.max() <= 1.0 + 1e-6
    assert abs(float(values.mean()) - entropy["mean"]) < 1e-4
    # the stored map does not make the image labelled
    assert image_id in _unlabelled(studies)


def test_uncertainty_strategy_picks_the_most_uncertain_unlabelled_image(server: Server, studies: Path) -> None:
    first = server.json("POST", "/activelearning/uncertainty", {"model": "mean_teacher"})
    unlabelled = _unlabelled(studies)
    assert first["id"] in unlabelled and first["measure"] == "entropy"
    ranking = first["ranking"]
    assert sorted(r["id"] for r in ranking) == unlabelled
    assert ranking[0]["id"] == first["id"] and [r["uncertainty"] for r in ranking] == sorted(
        (r["uncertainty"] for r in ranking), reverse=True)
    assert first["passes"] == len(unlabelled)
    again = server.json("POST", "/activelearning/uncertainty", {"model": "mean_teacher"})
    assert again["id"] == first["id"] and again["passes"] == 0  # cached: same checkpoint, same images


def test_one_epoch_of_mean_teacher_trains_on_monai_labels_unlabelled_images(
    server: Server, studies: Path, work: Path
) -> None:
    params = {"max_epochs": 1, "iterations_per_epoch": ITERATIONS, "val_split": 0.25, "device": "cpu",
              "multi_gpu": False}
    task = server.json("POST", "/train/mean_teacher", params)
    assert task["status"] in ("SUBMITTED", "RUNNING"), task
    status = _wait_for_training(server, timeout_s=TRAIN_TIMEOUT_S)
    details = "\n".join(status.get("details", []))
    assert status.get("status") == "DONE", f"training ended as {status.get('status')}:\n{details}\n{server.tail()}"

    summary = json.loads((work / "mean_teacher" / "eval" / "monailabel_train.json").read_text())
    unlabelled = {str((studies / f"{i}.nii.gz").resolve()) for i in _unlabelled(studies)}
    assert summary["counts"] == {"labelled": 3, "unlabelled": NUM_UNLABELLED, "validation": 1}
    assert {os.path.realpath(p) for p in summary["unlabelled"]} == unlabelled
    assert summary["unlabelled_drawn"] and set(summary["unlabelled_drawn"]) <= unlabelled
    assert summary["max_epochs"] == 1 and summary["epoch_length"] == ITERATIONS
    assert summary["budget"] == summary["iterations"] == ITERATIONS
    # ramp: the full 0.1 at the last iteration of a 10-iteration run (one ramp step per iteration would end at
    # exp(-5 (1 - 9/40)^2) x 0.1 = 0.005; sized by the config's 6000 iterations at exp(-5) x 0.1 = 0.0007)
    assert summary["consistency_weight"] == pytest.approx(0.1)
    # poly learning rate 0.01 (1 - t/40)^0.9 has reached (about) 0; sized by 6000 iterations it would be 0.00994
    assert summary["learning_rate"] < 0.01 * (1 / ITERATIONS) ** 0.9 + 1e-9
    assert (work / "mean_teacher" / "models" / "model.pt").is_file()


# errors answered as a server does -------------------------------------------------------------------------------------


def _error(server: Server, method: str, path: str, body: Any = None) -> tuple[int, str]:
    status, answer = server.answer(method, path, body)
    detail = json.loads(answer)["detail"]
    assert detail.startswith("semiseg: error: ") and "\n" not in detail, detail
    return status, detail


@pytest.mark.parametrize(("method", "path", "body", "status", "says"), [
    ("POST", "/infer/mean_teacher?image=no_such_image&output=json", None, 404,
     "image 'no_such_image' is not in the datastore"),
    ("POST", "/infer/no_such_bundle?image={image}&output=json", None, 404, "unknown model 'no_such_bundle'"),
    ("POST", "/activelearning/no_such_strategy", {}, 404, "unknown strategy 'no_such_strategy'"),
    ("POST", "/activelearning/uncertainty", {"model": "no_such_bundle"}, 404, "unknown model 'no_such_bundle'"),
    ("POST", "/activelearning/uncertainty", {"model": "mean_teacher", "measure": "aula"}, 422,
     "uncertainty measure 'aula' reads 'aula', which the inference of bundle 'mean_teacher' does not write"),
    ("POST", "/activelearning/uncertainty", {"model": "mean_teacher", "measure": "variance"}, 422,
     "unknown uncertainty measure 'variance'"),
    ("POST", "/train/no_such_bundle", {"max_epochs": 1}, 404, "unknown model 'no_such_bundle'"),
], ids=["unknown image", "unknown model", "unknown strategy", "strategy: unknown model", "measure not written",
        "unknown measure", "train: unknown bundle"])
def test_request_errors_are_answered_with_a_status_and_the_message(
    server: Server, studies: Path, method: str, path: str, body: Any, status: int, says: str
) -> None:
    got, detail = _error(server, method, path.format(image=_unlabelled(studies)[0]), body)
    assert (got, says in detail) == (status, True), detail
    assert server.process.poll() is None


def test_a_bundle_without_weights_is_a_409_and_infers_once_it_has_them(server: Server, studies: Path,
                                                                       work: Path) -> None:
    weights = work / "supervised" / "models" / "model.pt"
    aside = weights.with_name("model.pt.aside")
    image = _unlabelled(studies)[0]
    weights.rename(aside)
    try:
        for path, body in ((f"/infer/supervised?image={image}&output=json", None),
                           ("/activelearning/uncertainty", {"model": "supervised"})):
            status, detail = _error(server, "POST", path, body)
            assert status == 409 and f"bundle 'supervised' has no trained weights ({weights} does not exist)" in (
                detail), detail
    finally:
        aside.rename(weights)
    assert "entropy" in server.json("POST", f"/infer/supervised?image={image}&output=json")["uncertainty"]


def test_bad_training_parameters_end_the_task_in_one_line_naming_them(server: Server, work: Path) -> None:
    weights = work / "mean_teacher" / "models" / "model.pt"
    before = weights.stat().st_mtime_ns
    task = server.json("POST", "/train/mean_teacher", {"max_epochs": "abc", "val_split": 2, "device": "cpu",
                                                       "multi_gpu": False})
    assert task["status"] in ("SUBMITTED", "RUNNING"), task  # MONAI Label queues it before the app sees it
    status = _wait_for_training(server, timeout_s=300)
    assert status["status"] == "ERROR", status
    details = list(status["details"])
    first = next(i for i, line in enumerate(details) if line.startswith("semiseg: error: "))
    assert details[first:] == [
        "semiseg: error: /train/mean_teacher: max_epochs must be an integer >= 1, got 'abc' (and 1 more problem, "
        "listed below) (SEMISEG_TRACEBACK=1 prints the traceback)",
        "  - /train/mean_teacher: val_split must be a fraction in [0, 1) of the labelled images (0 or -1: no "
        "validation), got 2",
    ]
    assert not any("Traceback" in line for line in details)
    assert weights.stat().st_mtime_ns == before


# stopping -------------------------------------------------------------------------------------------------------------


def test_server_is_stopped_by_sigterm_to_start_server_alone(server: Server) -> None:
    pgid = server.process.pid
    server.stop()
    assert not _group_alive(pgid)
    assert port_is_free(server.port)


def test_make_label_passes_sigterm_on_to_the_server(studies: Path, tmp_path: Path) -> None:
    """`make label` execs the server in place of its recipe's shell, so the SIGTERM make passes to its child stops
    the server (a shell in between would die and leave the server serving, orphaned)."""
    port = free_port()
    venv = Path(sys.executable).parent.parent
    stamp = venv / ".semiseg-label-installed"
    command = ["make", "-o", str(stamp), "label", f"LABEL_VENV={venv}", f"STUDIES={studies}", f"LABEL_PORT={port}",
               f"LABEL_CONF=--conf work_dir {tmp_path / 'work'} --conf bundles mean_teacher --conf device cpu"]
    log = tmp_path / "make_label.log"
    process = subprocess.Popen(command, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "2"}, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while port_is_free(port):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(2)
    finally:
        stop_group(process)  # SIGTERM to make alone
    assert port_is_free(port)
    assert "Finished server process" in log.read_text(errors="replace")


if __name__ == "__main__":  # python tests/monailabel/monailabel_integration.py
    sys.exit(pytest.main([__file__, "-v", *sys.argv[1:]]))

