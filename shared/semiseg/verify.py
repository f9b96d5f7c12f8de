"""Verify every bundle the way the model zoo does, in one place: ``make verify`` (``python -m semiseg.verify``).

For each bundle (every ``bundles/<name>`` with an overlay, or the names given):

1. ``verify_metadata`` against the model-zoo schema shipped in ``schemas/`` (offline: MONAI's ``download_url``
   skips a schema file that already exists, and this module fails before calling it when the file is missing);
2. ``verify_net_in_out`` on ``network_def`` of ``configs/inference.json``, with the shapes in ``metadata.json``;
3. ``ckpt_export`` of ``network_def`` with the bundle's own ``export_use_trace`` (an ``inference.json`` value:
   scripting by default, tracing for networks TorchScript cannot script), from freshly initialised weights, and an
   eager-vs-TorchScript check: both get the same random input of the metadata's shape and their outputs must agree
   to ``atol``/``rtol``.

MONAI's own commands, for one bundle (what this runs)::

    python -m monai.bundle verify_metadata --meta_file bundles/<m>/configs/metadata.json \\
        --filepath schemas/meta_schema_20240725.json
    python -m monai.bundle verify_net_in_out network_def --meta_file bundles/<m>/configs/metadata.json \\
        --config_file bundles/<m>/configs/inference.json
    python -m monai.bundle ckpt_export network_def --filepath model.ts --ckpt_file bundles/<m>/models/model.pt \\
        --meta_file bundles/<m>/configs/metadata.json --config_file bundles/<m>/configs/inference.json

See docs/architecture.md §1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from .bundle_config import BUNDLES_DIR, REPO_ROOT, bundle_dirs
from .settings import flag

__all__ = [
    "EXPORT_TRACE_ID", "SCHEMAS_DIR", "VerifyResult", "export_matches_eager", "export_uses_trace", "schema_file",
    "verify_bundle",
]

EXPORT_TRACE_ID = "export_use_trace"
"""The ``inference.json`` id that says whether ``ckpt_export`` traces (True) or scripts (False) the network."""

SCHEMAS_DIR = REPO_ROOT / "schemas"


@dataclass
class VerifyResult:
    """The outcome of one check of one bundle.

    Attributes:
        bundle: the bundle's name.
        check: ``"verify_metadata"``, ``"verify_net_in_out"`` or ``"ckpt_export"``.
        error: None when it passed, else one line saying what failed.
    """

    bundle: str
    check: str
    error: str | None = None


def schema_file(meta_file: str | Path, schemas_dir: str | Path = SCHEMAS_DIR) -> Path:
    """The local copy of the schema a ``metadata.json`` names in its ``schema`` URL.

    Raises:
        FileNotFoundError: if ``schemas_dir`` has no file of that name (verifying would download it).
    """
    url = json.loads(Path(meta_file).read_text())["schema"]
    path = Path(schemas_dir) / url.rsplit("/", 1)[-1]
    if not path.is_file():
        raise FileNotFoundError(f"schema {path} not found: verify_metadata would download {url}; add it to schemas/")
    return path


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for key in sorted(output) for t in _flatten(output[key])]
    if isinstance(output, (list, tuple)):
        return [t for item in output for t in _flatten(item)]
    raise TypeError(f"network output of type {type(output).__name__} is not a tensor, list, tuple or dict")


def export_matches_eager(
    network: torch.nn.Module, exported: torch.nn.Module, input_shape: Sequence[int], atol: float = 1e-5,
    rtol: float = 1e-4, seed: int = 0,
) -> str | None:
    """Compare an eager network and its TorchScript export on one random input (both in eval mode).

    Args:
        network: the eager network, with the weights the export was made from.
        exported: ``torch.jit.load`` of the export.
        input_shape: ``(batch, channels, *spatial)``.
        atol: absolute tolerance.
        rtol: relative tolerance.
        seed: seed of the random input.

    Returns:
        None when every output tensor agrees, else a line naming the first difference.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(tuple(input_shape), generator=generator)
    network.eval()
    exported.eval()
    with torch.no_grad():
        eager, scripted = _flatten(network(x)), _flatten(exported(x))
    if len(eager) != len(scripted):
        return f"eager network returns {len(eager)} tensors, TorchScript {len(scripted)}"
    for i, (a, b) in enumerate(zip(eager, scripted)):
        if a.shape != b.shape:
            return f"output {i}: eager shape {tuple(a.shape)} != TorchScript {tuple(b.shape)}"
        if not torch.allclose(a, b, atol=atol, rtol=rtol):
            return f"output {i}: eager and TorchScript differ by up to {(a - b).abs().max().item():.3g}"
    return None


def _input_shape(meta_file: Path) -> list[int]:
    image = json.loads(meta_file.read_text())["network_data_format"]["inputs"]["image"]
    return [1, int(image["num_channels"]), *(int(s) for s in image["spatial_shape"])]


def export_uses_trace(parser: ConfigParser) -> bool:
    """The bundle's ``export_use_trace`` setting of a parsed ``inference.json`` (false when absent), read by
    :func:`semiseg.settings.flag`: ``ckpt_export`` traces the network when true, scripts it when false."""
    return flag(parser.get(EXPORT_TRACE_ID, False), EXPORT_TRACE_ID)


def _check_export(bundle_dir: Path, workdir: Path) -> None:
    configs = bundle_dir / "configs"
    meta_file, inference = configs / "metadata.json", configs / "inference.json"
    parser = ConfigParser()
    parser.read_config(str(inference))
    use_trace = export_uses_trace(parser)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True).cpu()
    ckpt = workdir / "model.pt"
    torch.save(network.state_dict(), ckpt)
    shape = _input_shape(meta_file)
    exported_path = workdir / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(exported_path), ckpt_file=str(ckpt), meta_file=str(meta_file),
        config_file=str(inference), use_trace=use_trace, input_shape=shape if use_trace else None,
    )
    exported = torch.jit.load(str(exported_path), map_location="cpu")
    mismatch = export_matches_eager(network, exported, shape)
    if mismatch is not None:
        how = "traced" if use_trace else "scripted"
        raise AssertionError(f"{how} export differs from the eager network: {mismatch}")


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    more = f" (+{len(lines) - 1} lines)" if len(lines) > 1 else ""
    return f"{type(err).__name__}: {lines[0] if lines else ''}{more}"


def verify_bundle(bundle_dir: str | Path, schemas_dir: str | Path = SCHEMAS_DIR) -> list[VerifyResult]:
    """Run the three checks on one bundle folder; a failing check does not stop the others.

    Args:
        bundle_dir: ``bundles/<name>`` (or an unpacked bundle zip).
        schemas_dir: where the metadata schema lies (an unpacked zip has its own ``schemas/``).

    Returns:
        One :class:`VerifyResult` per check, in the order above.
    """
    bundle_dir = Path(bundle_dir)
    configs = bundle_dir / "configs"
    meta_file, inference = configs / "metadata.json", configs / "inference.json"
    results = []
    with tempfile.TemporaryDirectory(prefix="semiseg-verify-") as tmp:
        checks = {
            "verify_metadata": lambda: verify_metadata(
                meta_file=str(meta_file), filepath=str(schema_file(meta_file, schemas_dir))
            ),
            "verify_net_in_out": lambda: verify_net_in_out(
                net_id="network_def", meta_file=str(meta_file), config_file=str(inference), device="cpu"
            ),
            "ckpt_export": lambda: _check_export(bundle_dir, Path(tmp)),
        }
        for name, check in checks.items():
            try:
                check()
                results.append(VerifyResult(bundle_dir.name, name))
            except Exception as err:  # report every check of every bundle, then fail once
                results.append(VerifyResult(bundle_dir.name, name, _one_line(err)))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semiseg.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="*", help="bundle names (default: every bundles/<name> with an overlay)")
    args = parser.parse_args(argv)
    dirs = [BUNDLES_DIR / name for name in args.bundles] if args.bundles else bundle_dirs()
    failed = 0
    for bundle_dir in dirs:
        for result in verify_bundle(bundle_dir):
            failed += result.error is not None
            status = "ok" if result.error is None else f"FAILED: {result.error}"
            print(f"{result.bundle:<18} {result.check:<18} {status}", flush=True)
    checks = 3 * len(dirs)
    print(f"verify: {checks - failed} passed, {failed} failed ({len(dirs)} bundles)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
