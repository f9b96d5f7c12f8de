"""A released bundle runs as its README says, with "MONAI alone", for every bundle (``make test-release``).

"MONAI alone" is exactly ``pip install "monai[fire,ignite,nibabel]==1.6.1"`` plus torch, without semiseg. This test
makes that environment for real: a fresh venv (``venv`` + pip) with ``torch==2.13.0`` and that line and nothing else
(no semiseg, no tensorboard). Then for each bundle it trains 2 iterations on the tiny demo data (in the development
environment), packages the zip with those weights (``scripts/package_bundles.py``), serves the dist folder from an
HTTP server on 127.0.0.1 (a free port chosen at run time), downloads it with ``monai.bundle.download(name=...,
url=..., bundle_dir=...)`` and runs ``python -m monai.bundle run --config_file configs/inference.json`` in the fresh
venv, in a subprocess whose working folder is the downloaded bundle (outside the repository) and whose
environment has no ``PYTHONPATH``; it checks the segmentations, entropy maps and provenance record. One bundle also
runs on a single file and a flat folder, and a zip without weights fails in one line.

The venv takes about a minute and 1 GB (the CPU torch wheel); with every bundle this is several minutes, so it is
its own CI step (marker ``release``), outside the 15-minute ``make test``. ``SEMISEG_RELEASE_VENV=/path`` reuses a
venv made by an earlier run.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
import venv
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import run

from tests.bundles.conftest import BUNDLES, REPO, bundle_overrides, config
from tests.bundles.test_package import package_bundles

pytestmark = pytest.mark.release

MONAI_ALONE = ["monai[fire,ignite,nibabel]==1.6.1"]
TORCH = "torch==2.13.0"
SHIPPED = "the bundle's scripts/ (no semiseg installed)"  # semiseg.inference.provenance.SHIPPED
ROI = "[32, 32, 32]"  # the tiny demo's volumes


def _clean_env() -> dict[str, str]:
    """The environment without anything that points at the repository or the development venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.fixture(scope="module")
def monai_alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding torch 2.13.0 and ``monai[fire,ignite,nibabel]==1.6.1`` only."""
    reuse = os.environ.get("SEMISEG_RELEASE_VENV")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("monai-alone") / "venv"
    python = root / "bin" / "python"
    if not python.is_file():
        venv.EnvBuilder(with_pip=True).create(root)
        install = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TORCH, *MONAI_ALONE]
        result = subprocess.run(install, env=_clean_env(), cwd=root, capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    probe = ("import importlib.util as u, monai, torch; "
             "print(monai.__version__, torch.__version__.split('+')[0], "
             "[m for m in ('semiseg', 'tensorboard', 'fire', 'ignite', 'nibabel') if u.find_spec(m)])")
    out = subprocess.run([str(python), "-c", probe], env=_clean_env(), cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[:2] == ["1.6.1", "2.13.0"], out.stdout
    assert out.stdout.strip().endswith("['fire', 'ignite', 'nibabel']"), out.stdout  # no semiseg, no tensorboard
    return python


@pytest.fixture(scope="module")
def dist_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """``(dist folder, its URL)``: an HTTP server on 127.0.0.1, a free port, serving the folder."""
    dist = tmp_path_factory.mktemp("dist")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(dist))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield dist, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _release(bundle: str, tiny_demo: Path, dist: Path, base_url: str, python: Path, work: Path,
             trained: bool = True) -> Path:
    """Train (optionally), package into ``dist``, download through HTTP with the fresh venv; the bundle root."""
    work.mkdir(parents=True, exist_ok=True)
    weights = None
    if trained:
        run("training", config_file=config(bundle, "train.json"), max_iterations=2, iterations_per_epoch=2,
            val_interval=10, **bundle_overrides(tiny_demo, work / "train"))
        weights = work / "train" / "models" / "model.pt"
    zip_path = package_bundles.package_bundle(REPO / "bundles" / bundle, dist, weights)
    hub = work / "hub"
    code = (f"from monai.bundle import download; download(name={bundle!r}, url={base_url + '/' + zip_path.name!r}, "
            f"bundle_dir={str(hub)!r})")
    result = subprocess.run([str(python), "-c", code], env=_clean_env(), cwd=work, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    root = hub / bundle
    assert (root / "configs" / "inference.json").is_file() and (root / "models" / "model.pt").is_file() is trained
    return root


def _infer(python: Path, root: Path, dataset: Path, output: str = "eval") -> subprocess.CompletedProcess[str]:
    cmd = [str(python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(dataset), "--roi_size", ROI, "--output_dir", output]
    return subprocess.run(cmd, cwd=root, env=_clean_env(), capture_output=True, text=True, timeout=600)


def _check_outputs(folder: Path, cases: list[str]) -> None:
    for case in cases:
        seg = nib.load(folder / f"{case}_seg.nii.gz")
        values = np.unique(np.asarray(seg.dataobj))
        assert seg.shape == (32, 32, 32) and set(values.tolist()) <= {0, 1, 2}, (case, seg.shape, values)
        entropy = np.asarray(nib.load(folder / f"{case}_entropy.nii.gz").dataobj)
        assert entropy.shape == (32, 32, 32) and 0.0 <= entropy.min() and entropy.max() <= 1.0 + 1e-5
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["status"] == "completed" and provenance["cases"] == len(cases)
    assert provenance["versions"]["semiseg"] == SHIPPED  # the zip's own scripts/, not an installed semiseg


@pytest.mark.parametrize("bundle", BUNDLES)
def test_released_zip_runs_with_monai_alone(
    bundle: str, monai_alone: Path, dist_server: tuple[Path, str], tiny_demo: Path, tmp_path: Path
) -> None:
    root = _release(bundle, tiny_demo, *dist_server, monai_alone, tmp_path)
    assert REPO not in root.parents
    result = _infer(monai_alone, root, tiny_demo)  # the data set folder: its dataset.json "test" list
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    _check_outputs(root / "eval", ["test_000", "test_001"])


def test_released_zip_reads_a_file_a_flat_folder_and_fails_in_one_line(
    monai_alone: Path, dist_server: tuple[Path, str], tiny_demo: Path, tmp_path: Path
) -> None:
    bundle = "supervised" if "supervised" in BUNDLES else BUNDLES[0]
    root = _release(bundle, tiny_demo, *dist_server, monai_alone, tmp_path / "trained")
    single = tiny_demo / "imagesTs" / "test_001.nii.gz"
    result = _infer(monai_alone, root, single, "eval_file")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_outputs(root / "eval_file", ["test_001"])
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(single, flat / "mine.nii.gz")
    result = _infer(monai_alone, root, flat, "eval_flat")
    assert result.returncode == 0, result.stderr[-3000:]
    _check_outputs(root / "eval_flat", ["mine"])

    empty = tmp_path / "empty"
    empty.mkdir()
    result = _infer(monai_alone, root, empty, "eval_empty")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert f"semiseg: error: no NIfTI images (.nii.gz, .nii) in inference input folder {empty}" in result.stderr

    untrained = _release(bundle, tiny_demo, *dist_server, monai_alone, tmp_path / "untrained", trained=False)
    result = _infer(monai_alone, untrained, tiny_demo)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("semiseg: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        f"semiseg: error: no trained weights: checkpoint {untrained / 'models' / 'model.pt'} does not exist"
    ), result.stderr[-3000:]
    assert not (untrained / "eval").exists()  # nothing written

