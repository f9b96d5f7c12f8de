"""A packaged bundle downloads with `monai.bundle.download` and runs inference with MONAI alone.

When its inference.json refers to semiseg code (a semiseg.networks network), the packager ships that code under
``<bundle>/scripts/semiseg/`` and rewrites the zip's references; modules that cannot run without semiseg installed
(absolute semiseg imports, other third-party packages) are refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import pytest
import torch
from monai.bundle import ConfigParser, download

import semiseg
from tests.bundles.conftest import REPO, config

_spec = importlib.util.spec_from_file_location("package_bundles", REPO / "scripts" / "package_bundles.py")
package_bundles = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(package_bundles)  # type: ignore[union-attr]

DEEP_SUPERVISION_NETWORK = {
    "_target_": "semiseg.networks.DeepSupervisionUNet",
    "in_channels": "@in_channels",
    "out_channels": "@num_classes",
    "filters": [8, 16, 32, 64, 128],
}
FACTORY_NETWORK = (
    "$semiseg.networks.unet(in_channels=@in_channels, out_channels=@num_classes, channels=(8, 16, 32, 64))"
)


def _infer_without_semiseg(bundle: Path, tiny_demo: Path, tmp_path: Path) -> None:
    """Run the bundle's inference.json in a subprocess where ``import semiseg`` fails; check the segmentation."""
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


def _copy_bundle(tmp_path: Path, network_def: dict | str, imports: tuple[str, ...] = ()) -> Path:
    """A copy of bundles/mean_teacher (configs, docs, LICENSE) whose inference.json builds ``network_def``."""
    source, bundle = REPO / "bundles" / "mean_teacher", tmp_path / "src" / "mean_teacher"
    for item in package_bundles.INCLUDE:
        path = source / item
        (shutil.copytree if path.is_dir() else shutil.copy)(path, bundle / item)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference["network_def"] = network_def
    inference["imports"] = [*inference.get("imports", []), *imports]
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    return bundle


def test_download_and_infer_without_semiseg(tiny_demo: Path, tmp_path: Path) -> None:
    parser = ConfigParser()
    parser.read_config(config("mean_teacher", "inference.json"))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "mean_teacher", tmp_path / "dist", weights)

    download(name="mean_teacher", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    bundle = tmp_path / "hub" / "mean_teacher"
    assert (bundle / "models" / "model.pt").is_file() and (bundle / "docs" / "README.md").is_file()
    _infer_without_semiseg(bundle, tiny_demo, tmp_path)


def test_load_bundle_config_reads_the_downloaded_bundle(tmp_path: Path, monkeypatch) -> None:
    """The documented call (bundle READMEs, MONAI Bundle Commands): MONAI's ``load_bundle_config`` on the folder
    ``download`` writes. On the zip itself it looks for ``<zip stem>/configs/metadata.json``, i.e.
    ``mean_teacher_v<version>/...``, while model-zoo zips (ours) hold ``mean_teacher/``: that call fails."""
    from monai.bundle import load_bundle_config

    zip_path = package_bundles.package_bundle(REPO / "bundles" / "mean_teacher", tmp_path / "dist")
    download(name="mean_teacher", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path / "hub" / "mean_teacher")
    parser = load_bundle_config(".", "inference.json")
    metadata = json.loads(Path(config("mean_teacher", "metadata.json")).read_text())
    with zipfile.ZipFile(zip_path) as zf:
        zipped = json.loads(zf.read("mean_teacher/configs/inference.json"))
    assert parser["_meta_#version"] == metadata["version"] and parser["_meta_#name"] == metadata["name"]
    assert parser["network_def"] == zipped["network_def"] and parser["output_dir"] == zipped["output_dir"]
    with pytest.raises(KeyError, match=f"mean_teacher_v{metadata['version']}/extra/metadata.json"):
        load_bundle_config(str(zip_path), "inference.json")


@pytest.mark.parametrize(
    ("network_def", "imports", "module"),
    [
        (DEEP_SUPERVISION_NETWORK, (), "deep_supervision"),
        (FACTORY_NETWORK, ("$import semiseg",), "unet_factory"),
    ],
    ids=["target", "expression"],
)
def test_semiseg_network_is_shipped_and_runs_without_semiseg(
    tiny_demo: Path, tmp_path: Path, network_def: dict | str, imports: tuple[str, ...], module: str
) -> None:
    source = _copy_bundle(tmp_path, network_def, imports)
    parser = ConfigParser()
    parser.read_config(str(source / "configs" / "inference.json"))
    weights = tmp_path / "model.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    zip_path = package_bundles.package_bundle(source, tmp_path / "dist", weights)

    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        scripts = "mean_teacher/scripts/semiseg"
        assert {f"{scripts}/__init__.py", f"{scripts}/networks/__init__.py", f"{scripts}/networks/{module}.py"} <= names
        assert zf.read(f"{scripts}/__init__.py") == b"" and zf.read(f"{scripts}/networks/__init__.py") == b""
        shipped = zf.read(f"{scripts}/networks/{module}.py").decode()
        assert shipped == (REPO / "shared" / "semiseg" / "networks" / f"{module}.py").read_text()
        zipped = json.loads(zf.read("mean_teacher/configs/inference.json"))
    # what the unmodified bundle ships (inference input checks, provenance, ...) plus the network's code
    base = package_bundles.shipped_modules(package_bundles.package_bundle(REPO / "bundles" / "mean_teacher", tmp_path))
    network_modules = package_bundles.collect_modules([f"semiseg.networks.{module}"])
    assert package_bundles.shipped_modules(zip_path) == sorted({*base, *network_modules})
    assert "semiseg." not in json.dumps(zipped).replace("scripts.semiseg.", "")
    assert f"scripts.semiseg.networks.{module}." in json.dumps(zipped["network_def"])
    assert json.loads((source / "configs" / "inference.json").read_text())["network_def"] == network_def

    download(name="mean_teacher", url=zip_path.as_uri(), bundle_dir=str(tmp_path / "hub"))
    _infer_without_semiseg(tmp_path / "hub" / "mean_teacher", tiny_demo, tmp_path)


def test_rewrites_every_reference_form() -> None:
    cfg = {
        "imports": ["$import glob", "$import semiseg", "$from semiseg.networks import unet as make_unet"],
        "a": {"_target_": "semiseg.networks.DeepSupervisionUNet", "note": "semiseg.networks stays in plain text"},
        "b": "$semiseg.networks.unet(out_channels=@n).to(@device)",
        "c": {"_target_": "UNet"},
    }
    new, modules = package_bundles.rewrite_inference_config(cfg)
    assert new == {
        "imports": [
            "$import glob",
            "$import scripts",
            "$from scripts.semiseg.networks.unet_factory import unet as make_unet",
        ],
        "a": {
            "_target_": "scripts.semiseg.networks.deep_supervision.DeepSupervisionUNet",
            "note": "semiseg.networks stays in plain text",
        },
        "b": "$scripts.semiseg.networks.unet_factory.unet(out_channels=@n).to(@device)",
        "c": {"_target_": "UNet"},
    }
    assert list(modules) == ["semiseg.networks.deep_supervision", "semiseg.networks.unet_factory"]
    assert package_bundles.rewrite_inference_config({"x": {"_target_": "UNet"}}) == ({"x": {"_target_": "UNet"}}, {})


@pytest.fixture
def fake_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A throw-away ``semiseg._packtest`` package in ``tmp_path``, importable while the test runs."""
    root = tmp_path / "fake"
    (root / "_packtest").mkdir(parents=True)
    (root / "_packtest" / "__init__.py").write_text("IN_INIT = 1\n")
    monkeypatch.setattr(semiseg, "__path__", [*semiseg.__path__, str(root)])
    importlib.invalidate_caches()
    yield root / "_packtest"
    for name in [n for n in sys.modules if n.startswith("semiseg._packtest")]:
        del sys.modules[name]
    vars(semiseg).pop("_packtest", None)


def test_collects_transitive_relative_imports(fake_modules: Path) -> None:
    (fake_modules / "a.py").write_text("from __future__ import annotations\n\nfrom .b import B\n\n\nclass A(B): ...\n")
    (fake_modules / "b.py").write_text("import math\n\nfrom . import c\n\n\nclass B:\n    scale = math.pi\n")
    (fake_modules / "c.py").write_text("import numpy as np\nimport torch\nfrom monai.networks import nets\n")
    new, modules = package_bundles.rewrite_inference_config({"net": {"_target_": "semiseg._packtest.a.A"}})
    assert new == {"net": {"_target_": "scripts.semiseg._packtest.a.A"}}
    assert list(modules) == [f"semiseg._packtest.{m}" for m in "abc"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("from semiseg.losses import entropy_map\n", r"imports 'semiseg.losses' absolutely.*'from \.\.losses import"),
        ("import semiseg.keys\n", r"imports 'semiseg.keys' absolutely"),
        ("import scipy.ndimage\n", r"imports 'scipy.ndimage'; .* only monai, numpy, torch, the standard library"),
        ("from . import IN_INIT\n", r"imports 'IN_INIT' from package semiseg._packtest, whose __init__ is not shipped"),
    ],
    ids=["absolute-from", "absolute-import", "third-party", "package-init"],
)
def test_refuses_modules_that_need_more_than_monai(
    fake_modules: Path, tmp_path: Path, source: str, message: str
) -> None:
    (fake_modules / "bad.py").write_text("import torch\n\n" + source + "\n\nclass Net(torch.nn.Module):\n    pass\n")
    (fake_modules / "wrapper.py").write_text("from .bad import Net\n")  # the bad module is reached transitively
    bundle = _copy_bundle(tmp_path, {"_target_": "semiseg._packtest.wrapper.Net"})
    with pytest.raises(ValueError, match=rf"bad.py:3: semiseg._packtest.bad {message}"):
        package_bundles.package_bundle(bundle, tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_refuses_unresolvable_and_package_references() -> None:
    with pytest.raises(ValueError, match="'semiseg.networks.NoSuchNet' does not resolve"):
        package_bundles.rewrite_inference_config({"n": {"_target_": "semiseg.networks.NoSuchNet"}})
    with pytest.raises(ValueError, match="cannot ship 'semiseg.networks': it is a package"):
        package_bundles.rewrite_inference_config({"n": "$semiseg.networks"})
    with pytest.raises(ValueError, match="write '\\$import semiseg' and full dotted references"):
        package_bundles.rewrite_inference_config({"imports": ["$import semiseg.networks as nets"]})


def test_cli_ships_weights_or_refuses_without_an_explicit_flag(tmp_path: Path, capsys) -> None:
    weights_dir = tmp_path / "results"
    argv = ["mean_teacher", "--out", str(tmp_path / "dist"), "--weights-from", str(weights_dir)]
    with pytest.raises(SystemExit) as info:
        package_bundles.main(argv)
    message = str(info.value.code)
    assert message.startswith(f"package_bundles: no trained weights (models/model.pt under {weights_dir}) for "
                              "mean_teacher: run `make demo` or train the bundle")
    assert "--allow-no-weights" in message and "\n" not in message and not (tmp_path / "dist").exists()

    package_bundles.main([*argv, "--allow-no-weights"])
    assert "WITHOUT weights (--allow-no-weights)" in capsys.readouterr().out
    version = json.loads((REPO / "bundles" / "mean_teacher" / "configs" / "metadata.json").read_text())["version"]
    zip_path = tmp_path / "dist" / f"mean_teacher_v{version}.zip"
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
    assert "mean_teacher/models/model.pt" not in names
    assert "mean_teacher/schemas/meta_schema_20240725.json" in names  # verify_metadata --filepath, offline

    (weights_dir / "mean_teacher" / "models").mkdir(parents=True)
    torch.save({}, weights_dir / "mean_teacher" / "models" / "model.pt")
    package_bundles.main(argv)
    assert f"(with weights {weights_dir / 'mean_teacher' / 'models' / 'model.pt'}" in capsys.readouterr().out
    with zipfile.ZipFile(zip_path) as zf:
        assert "mean_teacher/models/model.pt" in zf.namelist()


def test_the_training_record_ships_beside_the_weights(tmp_path: Path) -> None:
    """models/model.json (the training spacing inference compares its inputs with) goes into the zip with model.pt."""
    weights = tmp_path / "run" / "models" / "model.pt"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"weights")
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "supervised", tmp_path / "dist", weights)
    with zipfile.ZipFile(zip_path) as zf:
        assert "supervised/models/model.json" not in zf.namelist()
    (weights.parent / "model.json").write_text('{"training_spacing_mm": [1.5, 1.5, 1.5]}\n')
    zip_path = package_bundles.package_bundle(REPO / "bundles" / "supervised", tmp_path / "dist", weights)
    with zipfile.ZipFile(zip_path) as zf:
        assert zf.read("supervised/models/model.json") == (weights.parent / "model.json").read_bytes()
        assert {"supervised/scripts/semiseg/inference/spacing.py",
                "supervised/scripts/semiseg/inference/saving.py"} <= set(zf.namelist())


def test_cli_without_names_packages_every_bundle_with_weights_and_lists_the_skipped(tmp_path: Path, capsys) -> None:
    from tests.bundles.conftest import BUNDLES

    weights_dir, out = tmp_path / "results", tmp_path / "dist"
    argv = ["--out", str(out), "--weights-from", str(weights_dir)]
    with pytest.raises(SystemExit) as info:  # none has weights: the one failure, saying how to pack one bundle
        package_bundles.main(argv)
    message = str(info.value.code)
    assert message.startswith(f"package_bundles: no bundle has trained weights (models/model.pt under {weights_dir})")
    assert "make package PACKAGE_ARGS=<name>" in message and "\n" not in message and not out.exists()

    for name in ("mean_teacher", "cps"):
        (weights_dir / name / "models").mkdir(parents=True)
        torch.save({}, weights_dir / name / "models" / "model.pt")
    package_bundles.main(argv)
    lines = capsys.readouterr().out.splitlines()
    versions = {n: json.loads((REPO / "bundles" / n / "configs" / "metadata.json").read_text())["version"]
                for n in ("cps", "mean_teacher")}
    assert sorted(p.name for p in out.iterdir()) == [f"{n}_v{v}.zip" for n, v in sorted(versions.items())]
    skipped = [name for name in BUNDLES if name not in ("mean_teacher", "cps")]
    assert lines[-1] == (f"skipped {len(skipped)} bundles without trained weights (models/model.pt under "
                         f"{weights_dir}): {', '.join(skipped)}")
    assert len(lines) == 3 and all("with weights" in line for line in lines[:2])

    with pytest.raises(SystemExit) as info:  # a bundle named on the command line must have weights
        package_bundles.main(["supervised", *argv])
    assert str(info.value.code).endswith("; bundles with weights: cps, mean_teacher")
