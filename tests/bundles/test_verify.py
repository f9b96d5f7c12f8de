"""Model-zoo verification in one place (``make verify``, ``semiseg.verify``), metadata that survives MONAI's parser,
the schema travelling in the zip, and the documented "MONAI alone" install line (docs/architecture.md §1)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_metadata

from semiseg import verify
from tests.bundles.conftest import BUNDLES, REPO, config
from tests.bundles.test_package import package_bundles

MONAI_ALONE_LINE = 'pip install "monai[fire,ignite,nibabel]==1.6.1"'
INFERENCE_PACKAGES = {"fire", "nibabel", "pytorch-ignite"}  # what the MONAI alone line installs besides MONAI


@pytest.mark.parametrize("bundle", BUNDLES)
def test_required_packages_survive_monais_metadata_parser(bundle: str) -> None:
    """MONAI 1.6.1's ``read_meta`` replaces ``required_packages_version`` with ``optional_packages_version`` (a
    deprecated alias), so the metadata must not have the latter."""
    parser = ConfigParser()
    parser.read_meta(config(bundle, "metadata.json"))
    required = parser["_meta_"]["required_packages_version"]
    assert INFERENCE_PACKAGES | {"tensorboard"} <= set(required), required
    assert "optional_packages_version" not in json.loads(Path(config(bundle, "metadata.json")).read_text())
    assert MONAI_ALONE_LINE in parser["_meta_"]["install_note"]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket connection fails, so a download attempt raises."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_metadata_offline_from_an_unpacked_zip(bundle: str, tmp_path: Path, no_network: None) -> None:
    zip_path = package_bundles.package_bundle(REPO / "bundles" / bundle, tmp_path / "dist")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "hub")
    root = tmp_path / "hub" / bundle
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    schema = root / package_bundles.schema_arcname(meta)  # schemas/meta_schema_20240725.json
    assert schema.read_bytes() == (REPO / "schemas" / schema.name).read_bytes()
    verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))
    # the guard works: without the shipped schema, verify_metadata tries to download and fails
    schema.unlink()
    with pytest.raises(Exception, match="network access is disabled|Download of file from"):
        verify_metadata(meta_file=str(root / "configs" / "metadata.json"), filepath=str(schema))


def test_export_check_compares_eager_and_torchscript() -> None:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    scripted = torch.jit.script(net)
    assert verify.export_matches_eager(net, scripted, (1, 1, 4, 4, 4)) is None
    other = torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1))  # other weights: must be caught
    assert verify.export_matches_eager(net, other, (1, 1, 4, 4, 4)).startswith("output 0: eager and TorchScript")
    narrower = torch.jit.script(torch.nn.Conv3d(1, 3, 3, padding=1))
    assert verify.export_matches_eager(net, narrower, (1, 1, 4, 4, 4)) == (
        "output 0: eager shape (1, 2, 4, 4, 4) != TorchScript (1, 3, 4, 4, 4)"
    )


@pytest.mark.parametrize("use_trace", [False, True], ids=["script", "trace"])
def test_verify_bundle_runs_the_three_checks(use_trace: bool, tmp_path: Path) -> None:
    """The per-bundle ``export_use_trace`` value of inference.json picks scripting or tracing."""
    bundle = "supervised" if "supervised" in BUNDLES else BUNDLES[0]
    root = tmp_path / bundle
    shutil.copytree(REPO / "bundles" / bundle / "configs", root / "configs")
    inference = json.loads((root / "configs" / "inference.json").read_text())
    inference[verify.EXPORT_TRACE_ID] = use_trace
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    results = verify.verify_bundle(root)
    assert [(r.check, r.error) for r in results] == [
        ("verify_metadata", None), ("verify_net_in_out", None), ("ckpt_export", None)
    ]
    # a broken metadata file fails its check and the others still run
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    del meta["task"]
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    failed = verify.verify_bundle(root)
    assert failed[0].error is not None and "task" in failed[0].error and failed[1].error is None


def test_every_bundle_sets_a_boolean_export_mode() -> None:
    for bundle in BUNDLES:
        value = json.loads(Path(config(bundle, "inference.json")).read_text()).get(verify.EXPORT_TRACE_ID)
        assert isinstance(value, bool), f"{bundle}: inference.json {verify.EXPORT_TRACE_ID} is {value!r}"


@pytest.mark.parametrize("readme", ["README.md", *(f"bundles/{b}/docs/README.md" for b in BUNDLES)])
def test_readmes_give_the_monai_alone_install_line(readme: str) -> None:
    assert MONAI_ALONE_LINE in (REPO / readme).read_text(), f"{readme} must state: {MONAI_ALONE_LINE} plus torch"


def test_readme_refers_only_to_files_in_the_repository() -> None:
    """Links and backticked document paths in the README (the design notes are docs/architecture.md) exist."""
    text = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)", text)
    documents = re.findall(r"`((?:\.\./)?[\w./-]+\.md)`", text)
    paths = [p for p in links + documents if "://" not in p]
    assert "docs/architecture.md" in paths
    missing = [p for p in paths if not (REPO / p).resolve().is_file() or ".." in Path(p).parts]
    assert not missing, f"README.md refers to files that are not in the repository: {missing}"


def test_check_weights_fails_in_one_line_naming_the_file(tmp_path: Path) -> None:
    from semiseg.bundle_checks import check_weights
    from semiseg.errors import SettingError, format_user_error, user_error

    weights = tmp_path / "models" / "model.pt"
    with pytest.raises(SettingError) as info:
        check_weights(str(weights))
    report = format_user_error(user_error(info.value))
    assert report.startswith(f"semiseg: error: no trained weights: checkpoint {weights} does not exist: train the "
                             "bundle first, or pass --ckpt_dir") and "\n" not in report.strip()
    weights.parent.mkdir()
    weights.write_bytes(b"")
    with pytest.raises(Exception) as info:
        check_weights(str(weights))
    report = format_user_error(user_error(info.value))
    assert f"inference weights file {weights} is empty (0 bytes)" in report and "\n" not in report.strip()
    torch.save(torch.nn.Linear(2, 3).state_dict(), weights)
    assert check_weights(str(weights)) is True and check_weights(str(weights), "evaluate", torch.nn.Linear(2, 3))
    with pytest.raises(Exception, match=r"2 tensor\(s\) differ in shape \(weight: \(3, 2\) in the file, \(4, 2\) here"):
        check_weights(str(weights), "evaluate", torch.nn.Linear(2, 4))
