"""Package each bundle as a MONAI bundle zip (``dist/<name>_v<version>.zip``) for ``monai.bundle.download``.

The zip holds ``<name>/configs``, ``<name>/docs``, ``<name>/LICENSE`` and, when trained weights are given,
``<name>/models/model.pt``. Its ``inference.json`` needs only MONAI, so after

    python -c "from monai.bundle import download; \
        download(name='mean_teacher', url='file:///.../mean_teacher_v0.1.0.zip', bundle_dir='bundles')"
    cd bundles/mean_teacher && python -m monai.bundle run --config_file configs/inference.json --dataset_dir DATA

inference runs with nothing but MONAI installed (``bundle_root`` resolves to ``.`` outside the repo).
"""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INCLUDE = ("configs", "docs", "LICENSE")


def package_bundle(bundle_dir: Path, out_dir: Path, weights: Path | None = None) -> Path:
    """Zip one bundle folder.

    Args:
        bundle_dir: ``bundles/<name>``.
        out_dir: where the zip goes.
        weights: optional ``model.pt`` to ship under ``models/``.

    Returns:
        The zip path.

    Raises:
        FileNotFoundError: if the bundle lacks a required file or ``weights`` does not exist.
    """
    name = bundle_dir.name
    meta_path = bundle_dir / "configs" / "metadata.json"
    for item in INCLUDE + ("configs/metadata.json", "configs/inference.json"):
        if not (bundle_dir / item).exists():
            raise FileNotFoundError(f"bundle {bundle_dir} is missing {item}")
    version = json.loads(meta_path.read_text())["version"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}_v{version}.zip"
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for item in INCLUDE:
            path = bundle_dir / item
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                zf.write(file, f"{name}/{file.relative_to(bundle_dir)}")
        if weights is not None:
            if not weights.is_file():
                raise FileNotFoundError(f"weights {weights} not found: train the bundle first (make demo)")
            zf.write(weights, f"{name}/models/model.pt")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", help="bundle names (default: all under bundles/)")
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    parser.add_argument("--weights-from", type=Path, default=REPO / "results" / "demo",
                        help="folder with <bundle>/models/model.pt to ship (skipped when absent)")
    args = parser.parse_args()
    names = args.bundles or sorted(p.name for p in (REPO / "bundles").iterdir() if p.is_dir())
    for name in names:
        weights = args.weights_from / name / "models" / "model.pt"
        target = package_bundle(REPO / "bundles" / name, args.out, weights if weights.is_file() else None)
        print(f"{target} ({'with' if weights.is_file() else 'without'} weights)")


if __name__ == "__main__":
    main()
