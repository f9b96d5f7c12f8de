"""Write a MONAI Label studies folder from the demo phantom: some images with a final label, the rest without.

    python scripts/monailabel_app/make_studies.py runs/label_studies --labelled 4 --unlabelled 12

MONAI Label's local datastore reads ``<studies>/*.nii.gz`` and their labels from ``<studies>/labels/final/``; the
images without one are its unlabelled images, which the app's train task gives a semi-supervised bundle.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from semiseg.data.demo import make_demo_dataset


def make_studies(
    folder: str | Path, labelled: int = 4, unlabelled: int = 12, shape: Sequence[int] = (64, 64, 64), seed: int = 0
) -> Path:
    """Generate ``labelled + unlabelled`` demo cases into ``folder`` (the first ``labelled`` with a final label).

    Args:
        folder: the studies folder (created; existing files of the same names are replaced).
        labelled: cases with a label under ``labels/final``.
        unlabelled: cases without.
        shape: volume size.
        seed: the demo generator's seed.

    Returns:
        The folder.

    Raises:
        ValueError: if ``labelled < 1`` or ``unlabelled < 0``.
    """
    if labelled < 1 or unlabelled < 0:
        raise ValueError(f"need labelled >= 1 and unlabelled >= 0, got {labelled} and {unlabelled}.")
    folder = Path(folder)
    (folder / "labels" / "final").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        make_demo_dataset(tmp, seed=seed, num_train=labelled + unlabelled, num_reference=0, num_test=1, shape=shape)
        for i, image in enumerate(sorted((Path(tmp) / "imagesTr").glob("*.nii.gz"))):
            shutil.copy(image, folder / image.name)
            if i < labelled:
                shutil.copy(Path(tmp) / "labelsTr" / image.name, folder / "labels" / "final" / image.name)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--labelled", type=int, default=4)
    parser.add_argument("--unlabelled", type=int, default=12)
    parser.add_argument("--size", type=int, default=64, help="edge of the cubic volumes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_studies(args.folder, args.labelled, args.unlabelled, (args.size,) * 3, args.seed)
    print(f"{out}: {args.labelled} labelled, {args.unlabelled} unlabelled studies")


if __name__ == "__main__":
    main()
