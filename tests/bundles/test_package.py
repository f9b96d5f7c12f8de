"""A packaged bundle downloads with `monai.bundle.download` and runs inference with MONAI alone."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import torch
from monai.bundle import ConfigParser, download

from tests.bundles.conftest import REPO, config

_spec = importlib.util.spec_from_file_location("package_bundles", REPO / "scripts" / "package_bundles.py")
package_bundles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package_bundles)  # type: ignore[union-attr]


def test_download_and_infer_without_semiseg(tiny_demo: Path, tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "inference.json"))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "mean_teacher", tmp_path / "dist", weights)

    download(name="mean_teacher", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    bundle = tmp_path / "hub" / "mean_teacher"
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "docs" / "README.md").is_file()

    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "semiseg.py").write_text("raise ImportError('semiseg must not be needed for inference')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
           "--dataset_dir", str(tiny_demo), "--roi_size", "[32, 32, 32]"]
    result = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seg = nib.load(bundle / "eval" / "test_000_seg.nii.gz")
    assert seg.shape == (32, 32, 32)
