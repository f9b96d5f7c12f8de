"""semiseg.inference.provenance: evaluate and inference outputs carry a provenance.json saying which bundle,
checkpoint (sha256) and command made them; inference writes it with MONAI alone too."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import monai
import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser, download, run

from semiseg.files import WriteError
from semiseg.inference import ProvenanceWriter, file_sha256
from tests.bundles.conftest import REPO, bundle_overrides, config
from tests.bundles.test_package import package_bundles


def _weights(bundle: str, path: Path) -> Path:
    parser = ConfigParser()
    parser.read_config(config(bundle, "inference.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def test_missing_checkpoint_fails_before_the_run(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"checkpoint \S+model\.pt does not exist: train the bundle first, or "
                                                r"pass --ckpt_dir .*; the folder \S+nowhere does not exist either"):
        ProvenanceWriter(tmp_path / "out", tmp_path / "nowhere" / "model.pt")
    assert not (tmp_path / "out").exists()


def test_record_is_written_at_start_and_completion(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.arange(3)}, checkpoint)
    writer = ProvenanceWriter(tmp_path / "out", checkpoint, metadata={"name": "b", "version": "1.2.3"},
                              settings={"roi_size": (32, 32, 32), "device": torch.device("cpu")}, workflow="evaluate")
    seen: list[dict] = []
    engine = Engine(lambda e, b: seen.append(json.loads((tmp_path / "out" / "provenance.json").read_text())))
    writer.attach(engine)
    engine.run([0, 1, 2], max_epochs=1)

    during, after = seen[0], json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert during["status"] == "started" and during["finished"] is None and during["started"].endswith("Z")
    assert [r["cases"] for r in seen] == [0, 1, 2]  # each case is recorded as it is written
    assert after["status"] == "completed" and after["cases"] == 3 and after["finished"] >= after["started"]
    assert after["workflow"] == "evaluate" and after["bundle"] == {"name": "b", "version": "1.2.3"}
    sha256 = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert after["checkpoint"] == {"path": str(checkpoint), "sha256": sha256, "bytes": checkpoint.stat().st_size}
    assert after["settings"] == {"roi_size": [32, 32, 32], "device": "cpu"}
    assert after["command"] == {"argv": sys.argv, "overrides": None}  # in-process: no bundle command line
    assert after["versions"]["monai"] == monai.__version__ and after["versions"]["torch"] == torch.__version__
    assert after["versions"]["semiseg"] == "0.1.0"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["provenance.json"]  # no temporary file left


def _failing_engine(fail_at: int, event=None) -> Engine:
    def step(engine: Engine, batch: int) -> None:
        if batch == fail_at:
            raise RuntimeError("out of memory\nmore lines")

    engine = Engine(step)
    if event is not None:
        engine.add_event_handler(event, lambda e: (_ for _ in ()).throw(FileNotFoundError("weights gone")))
    return engine


def test_a_run_that_fails_midway_says_failed_with_the_error_and_the_cases_written(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.arange(3)}, checkpoint)
    writer = ProvenanceWriter(tmp_path / "out", checkpoint)
    engine = _failing_engine(fail_at=2)
    writer.attach(engine)
    engine.add_event_handler(Events.EXCEPTION_RAISED, lambda e, err: (_ for _ in ()).throw(err))  # as StatsHandler
    with pytest.raises(RuntimeError, match="out of memory"):
        engine.run([0, 1, 2, 3], max_epochs=1)
    record = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert record["status"] == "failed" and record["cases"] == 2 and record["finished"] >= record["started"]
    assert record["error"] == "RuntimeError: out of memory"


def test_a_run_that_fails_before_its_first_case_leaves_the_earlier_record(tmp_path: Path) -> None:
    """A checkpoint loader failing at STARTED (attached before the writer): nothing in output_dir changes."""
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.arange(3)}, checkpoint)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "provenance.json").write_text('{"status": "completed"}\n')
    engine = _failing_engine(fail_at=-1, event=Events.STARTED)
    ProvenanceWriter(tmp_path / "out", checkpoint).attach(engine)
    with pytest.raises(FileNotFoundError):
        engine.run([0, 1], max_epochs=1)
    assert (tmp_path / "out" / "provenance.json").read_text() == '{"status": "completed"}\n'


def test_an_unwritable_output_dir_fails_before_the_run(tmp_path: Path, monkeypatch) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save({"w": torch.arange(3)}, checkpoint)
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only")))
    with pytest.raises(WriteError, match=r"output_dir \S+out is not writable \(it does not exist and cannot be "
                                         r"created in \S+\): Read-only \(EROFS\)"):
        ProvenanceWriter(tmp_path / "out", checkpoint)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_the_record_has_the_mode_of_a_new_file_under_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save({}, checkpoint)
    writer = ProvenanceWriter(tmp_path / "out", checkpoint)
    previous = os.umask(umask)
    try:
        writer.write()
        assert os.umask(umask) == umask  # the writer left the process umask as it found it
    finally:
        os.umask(previous)
    assert (tmp_path / "out" / "provenance.json").stat().st_mode & 0o777 == mode


def test_evaluate_writes_provenance_next_to_its_metrics(tiny_demo: Path, tmp_path: Path) -> None:
    model = _weights("supervised", tmp_path / "models" / "model.pt")
    run(config_file=[config("supervised", "train.json"), config("supervised", "evaluate.json")],
        **bundle_overrides(tiny_demo, tmp_path))
    record = json.loads((tmp_path / "eval" / "provenance.json").read_text())
    assert record["workflow"] == "evaluate" and record["status"] == "completed" and record["cases"] == 2
    assert record["checkpoint"]["sha256"] == file_sha256(model)
    assert record["bundle"]["name"].startswith("Supervised") and record["bundle"]["version"]
    assert record["settings"]["dataset_dir"] == str(tiny_demo)
    assert (tmp_path / "eval" / "test_000_metrics.json").is_file()


def test_released_bundle_infers_a_plain_folder_with_monai_alone(tiny_demo: Path, tmp_path: Path) -> None:
    """The zip's inference: a plain folder of NIfTI images, NaN voxels replaced on request, provenance.json with
    the command line's overrides and no semiseg installed."""
    model = _weights("supervised", tmp_path / "model.pt")
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "supervised", tmp_path / "dist", model)
    download(name="supervised", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    bundle = tmp_path / "hub" / "supervised"
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(tiny_demo / "imagesTs" / "test_000.nii.gz", images / "a.nii.gz")
    source = nib.load(str(tiny_demo / "imagesTs" / "test_001.nii.gz"))
    voxels = np.asarray(source.dataobj, dtype=np.float32)
    voxels[0, 0, :4] = np.nan
    nib.save(nib.Nifti1Image(voxels, source.affine), str(images / "b.nii.gz"))
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "semiseg.py").write_text("raise ImportError('semiseg must not be needed for inference')\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(images), "--output_dir", str(out), "--roi_size", "[32, 32, 32]",
           "--nonfinite_voxels", "replace"]
    env = {**os.environ, "PYTHONPATH": str(blocker), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("a", "b"):
        seg = nib.load(str(out / f"{name}_seg.nii.gz")).get_fdata()
        assert seg.shape == (32, 32, 32) and set(np.unique(seg)) <= {0, 1, 2}
    record = json.loads((out / "provenance.json").read_text())
    assert record["status"] == "completed" and record["cases"] == 2 and record["workflow"] == "inference"
    assert record["checkpoint"] == {"path": str(bundle / "models" / "model.pt"), "sha256": file_sha256(model),
                                    "bytes": model.stat().st_size}
    assert record["command"]["overrides"] == {"dataset_dir": str(images), "output_dir": str(out),
                                              "roi_size": "[32, 32, 32]", "nonfinite_voxels": "replace"}
    assert record["versions"]["semiseg"] == "the bundle's scripts/ (no semiseg installed)"
    assert record["settings"]["nonfinite_voxels"] == "replace"
