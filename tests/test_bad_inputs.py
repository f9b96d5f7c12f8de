"""The bad-input matrix: every bad input a run can be given, and what it must do about it.

Each :class:`Row` makes one bad input and says what must happen: the exit status, and a one-line message (the first
line of ``semiseg: error: ...``, see ``semiseg.errors``) that matches ``message`` and names the offending file or
setting. In every row, the checkpoints and results that existed before are byte-identical afterwards.

Kinds (``Row.kind``) and how they run:

- ``data``: once, in-process, through the data layer (``load_datalist`` / ``validate_datalist``); "exit status" 1
  means the error is one the command line reports in one line (``semiseg.errors.user_error``).
- ``override``, ``checkpoint``: for every bundle (``tests/bundles/conftest.py::BUNDLES``), as a subprocess
  ``python -m monai.bundle run`` from the repository.
- ``inference``: for every bundle, as a subprocess running the bundle's *released zip* with MONAI alone (semiseg
  blocked), as a user who downloaded it would.

Adding a row: append a ``Row`` to ``ROWS`` (or ``BUNDLE_ROWS``) with a ``make(ws) -> Call`` that builds the bad input
in the row's :class:`Workspace` and returns what to run (``ws.load(...)``, ``ws.train(...)``, ``ws.evaluate(...)``,
``ws.infer(...)``, or a ``Call`` of your own), with ``names=`` the file or setting the message must name. A new kind
that runs in-process goes into ``IN_PROCESS_KINDS``. Only rows whose behaviour can differ between bundles should be
per-bundle kinds: each costs one subprocess (about 6 s) per bundle. A per-bundle row runs for one bundle of each group
whose configs agree on everything the row goes through before its error (:func:`fingerprint`: ``initialize``, data
list, pre-processing, paths), plus supervised and mean_teacher; a bundle that changes any of these gets its own run.
A row whose check is the template's own and cannot differ between bundles (a setting's parser, a file check shared by
every bundle) names the bundle it runs for in ``Row.bundles`` (:data:`ONE`) instead.

Some rows go further than a refusal: a run that fails midway (``Row.changed`` names the earlier files it may
rewrite, e.g. ``provenance.json`` saying ``failed``), or a bad input the run handles and completes (status 0);
``Row.check`` then asserts what the run left (outputs, records, the log). Read-only folders and full disks are
simulated in the subprocess by ``tests/faults/sitecustomize.py`` (:meth:`Workspace.faults`): as root a ``chmod``-ed
folder stays writable.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from semiseg.data import load_datalist, validate_datalist
from semiseg.errors import format_user_error, user_error
from semiseg.handlers.checkpoint_dir import LOCK_FILE
from tests.bundles.conftest import BUNDLES, REPO, config
from tests.bundles.test_package import package_bundles

IN_PROCESS_KINDS = ("data",)
"""Kinds that run once, in-process; every other kind runs per bundle as a subprocess."""

SUBPROCESS_TIMEOUT_S = 240
_SHAPE = (8, 8, 6)
_PREFIX = "semiseg: error: "


# ----------------------------------------------------------------------------------------------------- framework


@dataclass
class Call:
    """What a row runs: an in-process function or a command line, and the file or setting its message must name.

    Attributes:
        names: text the one-line message must contain (a path, or ``--setting``).
        fn: in-process call (``data`` rows).
        argv: command line (subprocess rows).
        cwd: working directory of the command.
        env: extra environment variables.
    """

    names: str
    fn: Callable[[], Any] | None = None
    argv: list[str] | None = None
    cwd: Path = REPO
    env: dict[str, str] = field(default_factory=dict)
    stdout: str = ""


@dataclass(frozen=True)
class Row:
    """One bad input.

    Attributes:
        id: the pytest id.
        kind: ``"data"`` (in-process, once), ``"override"``, ``"inference"``, ``"checkpoint"`` (per bundle).
        make: builds the bad input in the workspace and returns the :class:`Call` to run.
        message: regex searched in the first line of the error report.
        status: the expected exit status.
        bundles: the bundles a subprocess row runs for; None: one per :func:`fingerprint` (:func:`representatives`).
        also: regexes the rest of the report must contain (the further problems of a report that lists several).
        changed: names of pre-existing result or checkpoint files the row may change (a run that fails midway
            rewrites ``provenance.json``); every other one stays byte-identical.
        check: further assertions on what the run left, given the workspace and the call (``call.stdout``).
    """

    id: str
    kind: str
    make: Callable[[Workspace], Call]
    message: str
    status: int = 1
    bundles: tuple[str, ...] | None = None
    also: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    check: Callable[[Workspace, Call], None] | None = None


def _write(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".npy"):
        np.save(path, array)
    else:
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def _image(seed: int, shape: tuple[int, ...] = _SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _label(seed: int, shape: tuple[int, ...] = _SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, size=shape).astype(np.uint8)


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its bytes (a partial download)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


class Workspace:
    """A row's folder: the bad input it builds, the pre-existing checkpoints and results that must survive.

    Args:
        root: the row's ``tmp_path``.
        bundle: the bundle (per-bundle kinds) or None.
        demo: a small demo data set (read-only; copy it with :attr:`data` before changing it).
        released: the bundle's downloaded zip folder (inference rows run a copy of it with MONAI alone).
    """

    def __init__(self, root: Path, bundle: str | None, demo: Callable[[], Path], released: Callable[[], Path]):
        self.root, self.bundle = root, bundle
        self._demo, self._released = demo, released
        self.cleanups: list[Callable[[], Any]] = []

    # ------------------------------------------------------------------------------------------- inputs to break
    @cached_property
    def data(self) -> Path:
        """A private copy of the 32^3 demo data set (MSD layout)."""
        return Path(shutil.copytree(self._demo(), self.root / "data"))

    def msd(self, n_train: int = 4, n_test: int = 1, unlabelled: int = 2, edit: Callable[[dict], Any] | None = None
            ) -> Path:
        """A tiny MSD data set (8x8x6 volumes); ``edit`` may change the ``dataset.json`` dict before it is written."""
        root = self.root / "msd"
        spec: dict[str, Any] = {"training": [], "test": [], "unlabeled": []}
        for i in range(n_train):
            _write(root / f"imagesTr/case_{i}.nii.gz", _image(i))
            _write(root / f"labelsTr/case_{i}.nii.gz", _label(i))
            spec["training"].append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
        for i in range(n_test):
            _write(root / f"imagesTs/test_{i}.nii.gz", _image(100 + i))
            _write(root / f"labelsTs/test_{i}.nii.gz", _label(100 + i))
            spec["test"].append({"image": f"./imagesTs/test_{i}.nii.gz", "label": f"./labelsTs/test_{i}.nii.gz"})
        for i in range(unlabelled):
            _write(root / f"imagesUn/un_{i}.nii.gz", _image(200 + i))
            spec["unlabeled"].append(f"./imagesUn/un_{i}.nii.gz")
        if edit is not None:
            edit(spec)
        (root / "dataset.json").write_text(json.dumps(spec))
        return root

    def bpl(self, n_labelled: int = 3) -> Path:
        """A tiny BPL data set (``labelled/{imgs,lbls}``, ``unlabelled/imgs``)."""
        root = self.root / "bpl"
        for i in range(n_labelled):
            _write(root / f"labelled/imgs/case_{i}.nii.gz", _image(i))
            _write(root / f"labelled/lbls/case_{i}.nii.gz", _label(i))
        _write(root / "unlabelled/imgs/un_0.nii.gz", _image(50))
        return root

    def la_h5(self, ids: Sequence[str] = ("a", "b")) -> Path:
        """A tiny SSL4MIS LA layout: ``train.list`` naming ``<id>/mri_norm2.h5`` cases."""
        import h5py

        root = self.root / "la"
        root.mkdir(parents=True, exist_ok=True)
        for i, case in enumerate(ids):
            (root / case).mkdir()
            with h5py.File(root / case / "mri_norm2.h5", "w") as f:
                f.create_dataset("image", data=_image(i))
                f.create_dataset("label", data=_label(i))
        (root / "train.list").write_text("".join(f"{case}\n" for case in ids))
        return root

    def images(self, **arrays: np.ndarray) -> Path:
        """A plain folder of NIfTI images ``<name>.nii.gz`` (inference input), next to a good demo image."""
        folder = self.root / "images"
        good = self.root / "data_src_image.nii.gz"
        shutil.copy(self._demo() / "imagesTs" / "test_000.nii.gz", good)
        image = nib.load(str(good))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(good, folder / "good.nii.gz")
        for name, array in arrays.items():
            _write(folder / f"{name}.nii.gz", array, image.affine)
        return folder

    def demo_image(self) -> np.ndarray:
        return np.asarray(nib.load(str(self._demo() / "imagesTs" / "test_000.nii.gz")).dataobj, dtype=np.float32)

    # ------------------------------------------------------------------------- what must survive a failed run
    @cached_property
    def models(self) -> Path:
        """Pre-existing ``model.pt`` (the bundle network's initial weights) and ``checkpoint.pt``."""
        folder = self.root / "models"
        folder.mkdir(parents=True, exist_ok=True)
        if self.bundle is not None:
            shutil.copy(self._released() / "models" / "model.pt", folder / "model.pt")
            torch.save({"model": torch.load(folder / "model.pt", weights_only=True)}, folder / "checkpoint.pt")
        return folder

    @cached_property
    def results(self) -> Path:
        """Pre-existing results: a segmentation, per-case metrics and a provenance record of an earlier run."""
        folder = self.root / "results"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "provenance.json").write_text('{"status": "completed", "earlier": true}\n')
        (folder / "test_000_metrics.json").write_text('{"dice": {"mean": 0.5}}\n')
        (folder / "test_000_seg.nii.gz").write_bytes(b"an earlier segmentation")
        return folder

    def snapshot(self, skip: Sequence[str] = ()) -> dict[str, str]:
        """sha256 of every pre-existing checkpoint and result file (but the names in ``skip``)."""
        files = [p for folder in (self.models, self.results) for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.name not in skip and p.name != LOCK_FILE]  # the lock is no result
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    @staticmethod
    def faults(env: dict[str, str] | None = None, **faults: str) -> dict[str, str]:
        """``env`` plus ``tests/faults`` first on ``PYTHONPATH`` and ``SEMISEG_FAULT_<NAME>`` for each fault
        (``readonly=folder``, ``full=folder``, ``full_match=glob``, ``full_after="1"``)."""
        env = dict(env or {})
        paths = [str(REPO / "tests" / "faults"), env.get("PYTHONPATH") or os.environ.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        env.update({f"SEMISEG_FAULT_{name.upper()}": str(value) for name, value in faults.items()})
        return env

    # ------------------------------------------------------------------------------------------------ calls
    def load(self, dataset_dir: Path, names: str | Path | None = None, **kwargs: Any) -> Call:
        """``load_datalist(dataset_dir, num_classes=3, **kwargs)``, in-process."""
        options = {"num_classes": 3, **kwargs}
        return Call(names=str(names if names is not None else dataset_dir),
                    fn=lambda: load_datalist(dataset_dir, **options))

    def validate(self, items: list[dict[str, Any]], names: str, **kwargs: Any) -> Call:
        """``validate_datalist(items, num_classes=3, **kwargs)``, in-process."""
        return Call(names=names, fn=lambda: validate_datalist(items, **{"num_classes": 3, **kwargs}))

    COMMON = {"--num_labelled": "2", "--num_val": "1", "--roi_size": "[32, 32, 32]", "--num_workers": "0"}
    """Options every training and evaluate row passes (besides the paths), unless its ``args`` give another value."""

    def _cli(self, configs: Sequence[str], names: str, args: Sequence[str], run_id: tuple[str, ...] = (),
             ckpt_dir: Path | None = None, dataset_dir: Path | None = None, output_dir: Path | None = None) -> Call:
        files = [config(str(self.bundle), c) for c in configs]
        config_file = files[0] if len(files) == 1 else repr(files)
        common = {"--dataset_dir": str(dataset_dir or self.data), "--ckpt_dir": str(ckpt_dir or self.models),
                  "--output_dir": str(output_dir or self.results), **self.COMMON}
        for key in args[::2]:
            common.pop(key, None)  # the row's own value replaces the common one
        argv = [sys.executable, "-m", "monai.bundle", "run", *run_id, "--config_file", config_file,
                *[t for pair in common.items() for t in pair], *args]
        return Call(names=names, argv=argv)

    def train(self, *args: str, names: str, ckpt_dir: Path | None = None, dataset_dir: Path | None = None,
              output_dir: Path | None = None) -> Call:
        """``python -m monai.bundle run training --config_file train.json`` on the demo copy (or ``dataset_dir``),
        plus ``args`` (``--key value`` pairs; a key of the common options replaces it); a run that trains gets its
        own ``ckpt_dir`` and ``output_dir`` (TensorBoard logs)."""
        return self._cli(["train.json"], names, args, ("training",), ckpt_dir=ckpt_dir, dataset_dir=dataset_dir,
                         output_dir=output_dir)

    def evaluate(self, *args: str, names: str) -> Call:
        """``python -m monai.bundle run --config_file "['train.json','evaluate.json']"``, plus ``args``."""
        return self._cli(["train.json", "evaluate.json"], names, args)

    def parsed(self, name: str, config_name: str = "train.json", **overrides: Any) -> Any:
        """The config item ``name`` of the bundle, parsed in-process with the rows' common settings and
        ``overrides`` (to build a checkpoint or weights a row then breaks)."""
        parser = ConfigParser()
        parser.read_config(config(str(self.bundle), config_name))
        common = {k.lstrip("-"): json.loads(v) for k, v in self.COMMON.items()}
        parser.update({**common, "dataset_dir": str(self.root), "ckpt_dir": str(self.models), **overrides})
        return parser.get_parsed_content(name)

    def infer(self, *args: str, names: str, dataset_dir: Path | None = None, output_dir: bool = True) -> Call:
        """Inference from a copy of the bundle's released zip, with MONAI alone (``import semiseg`` fails);
        ``output_dir=False`` leaves the zip's default (``./eval`` in the bundle folder)."""
        bundle = self.bundle_copy
        blocker = self.root / "block"
        blocker.mkdir(exist_ok=True)
        (blocker / "semiseg.py").write_text("raise ImportError('semiseg must not be needed for inference')\n")
        data = dataset_dir if dataset_dir is not None else self.data
        roi = [] if "--roi_size" in args[::2] else ["--roi_size", "[32, 32, 32]"]
        argv = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
                "--dataset_dir", str(data), "--ckpt_dir", str(self.models),
                *(["--output_dir", str(self.results)] if output_dir else []), *roi, *args]
        return Call(names=names, argv=argv, cwd=bundle, env={"PYTHONPATH": str(blocker)})

    @cached_property
    def bundle_copy(self) -> Path:
        """A copy of the bundle's released zip folder (inference runs in it)."""
        return Path(shutil.copytree(self._released(), self.root / "bundle",
                                    ignore=shutil.ignore_patterns("models", "eval")))


# -------------------------------------------------------------------------------------------------------- rows


def _edit_json(folder: Path, text: str) -> Path:
    (folder / "dataset.json").write_text(text)
    return folder


def _replace(path: Path, array: np.ndarray) -> Path:
    """Overwrite a volume file with ``array`` (same affine)."""
    return _write(path, array)


def _label_row(id_: str, array: Callable[[], np.ndarray], message: str) -> Row:
    def make(ws: Workspace) -> Call:
        root = ws.msd()
        bad = _replace(root / "labelsTr/case_1.nii.gz", array())
        return ws.load(root, names=bad)

    return Row(id_, "data", make, message)


def _image_row(id_: str, array: Callable[[], np.ndarray], message: str) -> Row:
    def make(ws: Workspace) -> Call:
        root = ws.msd()
        bad = _replace(root / "imagesTr/case_1.nii.gz", array())
        return ws.load(root, names=bad)

    return Row(id_, "data", make, message)


def _msd_entry(edit: Callable[[dict], Any], message: str, id_: str) -> Row:
    def make(ws: Workspace) -> Call:
        root = ws.msd(edit=edit)
        return ws.load(root, names=root / "dataset.json")

    return Row(id_, "data", make, message)


def _missing_file(ws: Workspace, rel: str) -> Call:
    root = ws.msd()
    (root / rel).unlink()
    return ws.load(root, names=root / rel)


def _truncated(ws: Workspace, suffix: str) -> Call:
    root = ws.msd(edit=lambda s: s["training"][1].update(image=f"./imagesTr/case_1{suffix}"))
    path = _write(root / f"imagesTr/case_1{suffix}", _image(1))
    return ws.load(root, names=truncate(path, 0.6))


def _bpl_missing_label(ws: Workspace) -> Call:
    root = ws.bpl()
    (root / "labelled/lbls/case_2.nii.gz").unlink()
    return ws.load(root, names=root / "labelled/imgs/case_2.nii.gz")


def _bpl_orphan_label(ws: Workspace) -> Call:
    root = ws.bpl()
    (root / "labelled/imgs/case_2.nii.gz").unlink()
    return ws.load(root, names=root / "labelled/lbls/case_2.nii.gz")


def _bpl_no_label_folder(ws: Workspace) -> Call:
    root = ws.bpl()
    shutil.rmtree(root / "labelled/lbls")
    return ws.load(root, names=root / "labelled/lbls")


def _bpl_empty(ws: Workspace) -> Call:
    root = ws.bpl(n_labelled=0)
    (root / "labelled/imgs").mkdir(parents=True)
    (root / "labelled/lbls").mkdir(parents=True)
    return ws.load(root, names=root / "labelled/imgs")


def _la_missing_case(ws: Workspace) -> Call:
    root = ws.la_h5()
    (root / "train.list").write_text("a\nb\nghost\n")
    return ws.load(root, names="'ghost'")


def _la_empty_list(ws: Workspace) -> Call:
    root = ws.la_h5()
    (root / "train.list").write_text("# no cases\n")
    return ws.load(root, names=root / "train.list")


def _h5_item(ws: Workspace, dataset: str | None) -> Call:
    root = ws.la_h5()
    path = f"{root / 'a' / 'mri_norm2.h5'}" + (f"::{dataset}" if dataset else "")
    return ws.validate([{"image": path}], names=path, require_label=False)


def _damaged_gzip(ws: Workspace) -> Call:
    """One byte flipped mid-stream: nibabel would load garbage without checking the gzip CRC."""
    root = ws.msd()
    path = root / "imagesTr/case_1.nii.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return ws.load(root, names=path)


def _nan_voxels(ws: Workspace) -> Call:
    root = ws.msd()
    image = _image(1)
    image[0, 0, 0] = np.nan
    return ws.load(root, names=_write(root / "imagesTr/case_1.nii.gz", image))


def _two_channels(ws: Workspace) -> Call:
    root = ws.msd()
    bad = _write(root / "imagesTr/case_1.nii.gz", np.stack([_image(1)] * 2, -1))
    return ws.load(root, names=bad, in_channels=1)


def _label_off_grid(ws: Workspace) -> Call:
    root = ws.msd()
    bad = _write(root / "labelsTr/case_1.nii.gz", _label(1), np.diag([2.0, 2.0, 2.0, 1.0]))
    return ws.load(root, names=bad)


def _shared_file(ws: Workspace) -> Call:
    root = ws.msd(edit=lambda s: s["unlabeled"].append("./imagesTs/test_0.nii.gz"))
    return ws.load(root, names=root / "imagesTs" / "test_0.nii.gz")


def _repeated_training_entry(ws: Workspace) -> Call:
    """``case_0`` listed again as entry 1: with num_labelled=2 it would take case_1's labelled place."""
    root = ws.msd(edit=lambda s: s["training"].insert(1, dict(s["training"][0])))
    return ws.load(root, names=root / "imagesTr" / "case_0.nii.gz", num_labelled=2)


def _repeated_la_case(ws: Workspace) -> Call:
    root = ws.la_h5()
    (root / "train.list").write_text("a\nb\na\n")
    return ws.load(root, names=f"{root / 'a' / 'mri_norm2.h5'}::image")


def _empty_image(ws: Workspace) -> Call:
    root = ws.msd()
    path = root / "imagesTr/case_1.nii.gz"
    path.write_bytes(b"")
    return ws.load(root, names=path)


def _existing_model(ws: Workspace) -> Call:
    """A fresh training run where a trained model.pt already is: refused, nothing replaced."""
    _ = ws.models  # model.pt and checkpoint.pt of an earlier run
    return ws.train("--max_iterations", "2", names=str(ws.models / "model.pt"))


DATA_ROWS: list[Row] = [
    Row("dataset-dir-missing", "data", lambda ws: ws.load(ws.root / "nowhere"),
        r"data set directory \S+ does not exist"),
    Row("dataset-dir-no-layout", "data", lambda ws: ws.load(ws.root),
        r"cannot tell the layout of data set \S+: it has none of dataset\.json"),
    Row("layout-unknown", "data", lambda ws: ws.load(ws.msd(), layout="nifti"), r"unknown layout 'nifti'"),
    Row("dataset-json-invalid", "data", lambda ws: ws.load(_edit_json(ws.msd(), "{"), names="dataset.json"),
        r"cannot read \S+dataset\.json: .*JSONDecodeError"),
    Row("dataset-json-not-object", "data", lambda ws: ws.load(_edit_json(ws.msd(), "[]"), names="dataset.json"),
        r"dataset\.json must hold a JSON object, got list"),
    _msd_entry(lambda s: s.update(training={}), r"'training' must be a list, got dict", "training-not-a-list"),
    _msd_entry(lambda s: s.update(training=[]), r"has no 'training' cases", "training-empty"),
    _msd_entry(lambda s: s["training"][0].pop("label"), r"'training' entry 0 of \S+ \(image \S+\) has no 'label' path",
               "training-entry-without-label"),
    _msd_entry(lambda s: s["training"].append("./imagesTr/case_0.nii.gz"),
               r"'training' entry 4 of \S+ must be a dict with 'image' and 'label' paths", "training-entry-not-a-dict"),
    Row("image-missing", "data", lambda ws: _missing_file(ws, "imagesTr/case_1.nii.gz"), r"image \S+ does not exist"),
    Row("label-missing", "data", lambda ws: _missing_file(ws, "labelsTr/case_1.nii.gz"), r"label \S+ does not exist"),
    Row("image-unsupported-type", "data",
        lambda ws: ws.load(ws.msd(edit=lambda s: s["training"][0].update(image="./imagesTr/case_0.png")),
                           names="case_0.png"),
        r"image \S+case_0\.png has an unsupported file type"),
    Row("image-truncated-gz", "data", lambda ws: _truncated(ws, ".nii.gz"), r"truncated"),
    Row("image-truncated-nii", "data", lambda ws: _truncated(ws, ".nii"), r"truncated"),
    _image_row("image-2d", lambda: _image(1, (8, 8)), r"image \S+ has shape \(8, 8\), a 2-D array; expected a 3-D"),
    _image_row("image-too-many-channels", lambda: _image(1, (8, 8, 6, 9)), r"has shape \(8, 8, 6, 9\), a 4-D array"),
    _label_row("label-shape-mismatch", lambda: _label(1, (8, 8, 5)),
               r"label \S+ has shape \(8, 8, 5\) but its image \S+ has spatial shape \(8, 8, 6\)"),
    _label_row("label-value-out-of-range", lambda: np.full(_SHAPE, 5, np.uint8),
               r"label \S+ contains values \[5\] outside the class range 0\.\.2"),
    _label_row("label-negative", lambda: np.full(_SHAPE, -1, np.int16), r"label \S+ contains values \[-1\] outside"),
    _label_row("label-non-integer", lambda: np.full(_SHAPE, 0.5, np.float32), r"label \S+ contains non-integer values"),
    _label_row("label-nan", lambda: np.full(_SHAPE, np.nan, np.float32), r"label \S+ contains NaN or infinite values"),
    _label_row("label-not-3d", lambda: _label(1, (8, 8, 6, 2)), r"label \S+ has shape \(8, 8, 6, 2\).*must be 3-D"),
    Row("num-labelled-zero", "data", lambda ws: ws.load(ws.msd(), names="num_labelled", num_labelled=0),
        r"num_labelled must be at least 1, got 0"),
    Row("num-labelled-too-many", "data", lambda ws: ws.load(ws.msd(), names="num_labelled=10", num_labelled=10),
        r"num_labelled=10 but data set \S+ \(layout 'msd'\) has only 4 labelled cases"),
    Row("num-labelled-not-int", "data", lambda ws: ws.load(ws.msd(), names="num_labelled", num_labelled="2"),
        r"num_labelled must be an integer, got '2' \(str\)"),
    Row("labelled-ids-unknown", "data", lambda ws: ws.load(ws.msd(), names="['nope']", labelled_ids=["nope"]),
        r"labelled_ids \['nope'\] are not labelled cases of data set"),
    Row("labelled-ids-empty", "data", lambda ws: ws.load(ws.msd(), names="labelled_ids", labelled_ids=[]),
        r"labelled_ids is empty"),
    Row("labelled-ids-disagree", "data",
        lambda ws: ws.load(ws.msd(), names="num_labelled=3", labelled_ids=["case_0"], num_labelled=3),
        r"num_labelled=3 disagrees with labelled_ids, which select 1 cases"),
    Row("unlabelled-required-none", "data",
        lambda ws: ws.load(ws.msd(unlabelled=0), names="msd", num_labelled=4, require_unlabelled=True),
        r"the method needs unlabelled data, but data set \S+ \(layout 'msd'\) has none"),
    Row("num-classes-invalid", "data", lambda ws: ws.load(ws.msd(), names="num_classes", num_classes=0),
        r"num_classes must be a positive integer, got 0"),
    Row("bpl-no-label-folder", "data", _bpl_no_label_folder, r"\(layout 'bpl'\) has no folder \S+lbls"),
    Row("bpl-image-without-label", "data", _bpl_missing_label, r"image \S+case_2\.nii\.gz has no label"),
    Row("bpl-label-without-image", "data", _bpl_orphan_label, r"label \S+case_2\.nii\.gz has no image"),
    Row("bpl-no-volumes", "data", _bpl_empty, r"\S+imgs holds no volumes"),
    Row("la-h5-case-without-file", "data", _la_missing_case, r"case 'ghost' of \S+train\.list has no \.h5 file"),
    Row("la-h5-empty-list", "data", _la_empty_list, r"\S+train\.list lists no cases"),
    Row("h5-dataset-missing", "data", lambda ws: _h5_item(ws, "nope"),
        r"has no dataset 'nope' \(it holds: image, label\)"),
    Row("h5-path-without-dataset", "data", lambda ws: _h5_item(ws, None), r"is an HDF5 file but names no dataset"),
    # contents (read whole before training) and the four disjoint lists
    Row("image-gzip-damaged", "data", _damaged_gzip,
        r"cannot read image \S+: the file is corrupt \(.*CRC check failed"),
    Row("image-nan-voxels", "data", _nan_voxels, r"image \S+ has 1 NaN and 0 infinite voxels"),
    Row("image-channels-vs-in-channels", "data", _two_channels,
        r"image \S+ has 2 channels \(shape \(8, 8, 6, 2\)\) but the network takes in_channels=1"),
    Row("label-off-the-image-grid", "data", _label_off_grid, r"label \S+ is not on its image's voxel grid"),
    Row("lists-share-a-file", "data", _shared_file, r"file \S+test_0\.nii\.gz is in more than one list"),
    Row("num-val-too-many", "data",
        lambda ws: ws.load(ws.msd(), names="num_val=10", num_labelled=2, num_val=10),
        r"num_labelled=2 labelled plus num_val=10 validation cases need 12 labelled cases"),
    # a case listed twice (issue 33 item 7): refused, never a labelled case pushed into the unlabelled set
    Row("training-entry-listed-twice", "data", _repeated_training_entry,
        r"the dataset\.json 'training' list of data set \S+ \(layout 'msd'\) lists image \S+case_0\.nii\.gz 2 times "
        r"\(entries 0, 1, counting from 0\): it would be trained on twice, and take the labelled place of another "
        r"case"),
    Row("la-h5-case-listed-twice", "data", _repeated_la_case,
        r"the train\.list list of data set \S+ \(layout 'la_h5'\) lists image \S+mri_norm2\.h5::image 2 times "
        r"\(entries 0, 2"),
    Row("image-empty-file", "data", _empty_image, r"image \S+case_1\.nii\.gz is empty \(0 bytes\)"),
    Row("item-without-image", "data", lambda ws: ws.validate([{"label": "x.nii.gz"}], names="item 0"),
        r"item 0 of the data list has no 'image' path"),
    Row("item-path-not-a-string", "data", lambda ws: ws.validate([{"image": 3}], names="item 0"),
        r"item 0 of the data list has a image that is not a path: 3 \(int\)"),
]


def _nan_image(ws: Workspace) -> Call:
    image = ws.demo_image()
    image[0, 0, :7] = np.nan
    folder = ws.images(nan=image)
    return ws.infer(names=str(folder / "nan.nii.gz"), dataset_dir=folder)


def _bad_image(ws: Workspace, kind: str) -> Call:
    image = ws.demo_image()
    array = {"2d": image[:, :, 0], "2ch": np.stack([image, image], -1)}.get(kind, image)
    folder = ws.images(bad=array)
    if kind == "truncated":
        truncate(folder / "bad.nii.gz")
    return ws.infer(names=str(folder / "bad.nii.gz"), dataset_dir=folder)


def _empty_folder(ws: Workspace) -> Call:
    folder = ws.root / "empty"
    folder.mkdir()
    return ws.infer(names=str(folder), dataset_dir=folder)


def _missing_checkpoint(ws: Workspace, workflow: str) -> Call:
    (ws.models / "model.pt").unlink()
    call = (ws.infer if workflow == "inference" else ws.evaluate)(names=str(ws.models / "model.pt"))
    return call


ONE = ("mean_teacher",)
"""The bundle rows of the template's own checks run for (a method with hyper-parameters and a teacher)."""


def _training_checkpoint(ws: Workspace, iteration: int = 4, bundle: str | None = None) -> Path:
    """``checkpoint.pt`` as a run with the rows' settings writes it at ``iteration`` (what a resume reads: the model,
    the trainer's state and the run record), over the workspace's earlier one."""
    record = ws.parsed("run_record").state_dict()
    if bundle is not None:
        record["bundle"] = bundle
    model = torch.load(ws.models / "model.pt", weights_only=True)
    trainer = {"iteration": iteration, "epoch_length": 2, "max_epochs": 3000}
    path = ws.models / "checkpoint.pt"
    torch.save({"model": model, "trainer": trainer, "run_record": record}, path)
    return path


def _resume(ws: Workspace, *args: str, names: str) -> Call:
    """``--resume true`` with ``args``, from a data set folder that does not exist: the refusal must come before any
    data is read."""
    return ws.train("--resume", "true", *args, names=names, dataset_dir=ws.root / "no-data")


def _resume_changed(*args: str, names: str) -> Callable[[Workspace], Call]:
    """A row's ``make``: the training checkpoint of the rows' settings, resumed with ``args``."""

    def make(ws: Workspace) -> Call:
        _training_checkpoint(ws)
        return _resume(ws, *args, names=names)

    return make


def _resume_broken(ws: Workspace, how: str) -> Call:
    path = _training_checkpoint(ws)
    if how == "truncated":
        truncate(path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "no-record":
        state = torch.load(path, weights_only=True)
        torch.save({k: v for k, v in state.items() if k != "run_record"}, path)
    elif how == "other-bundle":
        _training_checkpoint(ws, bundle="supervised")
    return _resume(ws, names=str(path))


def _bad_weights(ws: Workspace, how: str, workflow: str) -> Call:
    """``model.pt`` broken as ``how``, for inference (released zip, MONAI alone) or evaluate."""
    path = ws.models / "model.pt"
    if how == "truncated":
        truncate(path)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other-bundle":
        parser = ConfigParser()
        parser.read_config(config("urpc", "inference.json"))
        torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    elif how == "other-classes":
        torch.save(ws.parsed("network_def", "inference.json", num_classes=2).state_dict(), path)
    if workflow == "inference":
        return ws.infer(names=str(path))
    return ws.evaluate(names=str(path))


def _damaged_image(ws: Workspace, how: str) -> Call:
    folder = ws.images(bad=ws.demo_image())
    path = folder / "bad.nii.gz"
    if how == "empty":
        path.write_bytes(b"")
    else:  # one byte flipped mid-stream: nibabel would read it without checking the gzip CRC
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return ws.infer(names=str(path), dataset_dir=folder)


def _empty_init_from(ws: Workspace) -> Call:
    empty = ws.root / "empty.pt"
    empty.write_bytes(b"")
    return ws.train("--init_from", str(empty), "--overwrite", "true", names=str(empty))


_NOT_DIVISIBLE = r"setting roi_size \[33, 33, 33\] does not fit the network: \w+ fails on a 33x33x33 input \(.*\); " \
                 r"each side must be a multiple of (8|16)"
_WEIGHTS_FIT = r"do not fit this bundle's network"

BUNDLE_ROWS: list[Row] = [
    # misspelt or out-of-range settings: fail before any work (no training over the existing checkpoints)
    Row("train-unknown-setting", "override", lambda ws: ws.train("--max_iteration", "2", names="--max_iteration"),
        r"unknown setting --max_iteration: .* has no id 'max_iteration'; did you mean --max_iterations\?"),
    Row("train-zero-iterations", "override", lambda ws: ws.train("--max_iterations", "0", names="max_iterations"),
        r"setting max_iterations must be an integer >= 1, got 0"),
    Row("evaluate-unknown-setting", "override", lambda ws: ws.evaluate("--output_dri", "x", names="--output_dri"),
        r"unknown setting --output_dri: .*; did you mean --output_dir\?"),
    Row("inference-unknown-setting", "override",
        lambda ws: ws.infer("--dataset_dri", "x", names="--dataset_dri"),
        r"unknown setting --dataset_dri: configs/inference\.json has no id 'dataset_dri'; "
        r"did you mean --dataset_dir\b"),
    # inference inputs, from the released zip with MONAI alone
    Row("inference-nan-voxels", "inference", _nan_image,
        r"image \S+ has 7 NaN and 0 infinite voxels .* pass --nonfinite_voxels replace"),
    Row("inference-2d-image", "inference", lambda ws: _bad_image(ws, "2d"), r"image \S+ has shape \(32, 32\), a 2-D"),
    Row("inference-2-channel-image", "inference", lambda ws: _bad_image(ws, "2ch"),
        r"image \S+ has 2 channels \(shape \(32, 32, 32, 2\)\) but the network takes in_channels = 1"),
    Row("inference-truncated-image", "inference", lambda ws: _bad_image(ws, "truncated"),
        r"cannot read image \S+: the file is truncated \(its gzip stream ends early"),
    Row("inference-empty-folder", "inference", _empty_folder,
        r"no NIfTI images \(\.nii\.gz, \.nii\) in inference input folder \S+: it is empty"),
    Row("inference-missing-folder", "inference",
        lambda ws: ws.infer(names=str(ws.root / "nowhere"), dataset_dir=ws.root / "nowhere"),
        r"inference input folder \S+ does not exist: pass --dataset_dir"),
    # checkpoints
    Row("train-over-an-existing-model", "checkpoint", _existing_model,
        r"\S+model\.pt exists: this training run would replace those weights\. Pass --resume true .* --overwrite true"),
    Row("inference-missing-checkpoint", "checkpoint", lambda ws: _missing_checkpoint(ws, "inference"),
        r"checkpoint \S+model\.pt does not exist: train the bundle first, or pass --ckpt_dir"),
    Row("evaluate-missing-checkpoint", "checkpoint", lambda ws: _missing_checkpoint(ws, "evaluate"),
        r"checkpoint \S+model\.pt does not exist: train the bundle first, or pass --ckpt_dir"),
    # boolean settings (issue 33 item 5): one parser; a component's own boolean refuses the string 'false'
    Row("train-boolean-setting-not-true-or-false", "override",
        lambda ws: ws.train("--binarise_label", "maybe", names="--binarise_label"),
        r"setting binarise_label must be true or false \(also 1/0, yes/no, any case\), got 'maybe'", bundles=ONE),
    Row("train-component-boolean-given-as-a-string", "override",
        lambda ws: ws.train("--train#dataloader#shuffle", "false", names="--train#dataloader#shuffle"),
        r"'train#dataloader#shuffle' is a true/false argument that \S*(DataLoader|data_loader) takes as given, and "
        r"the command line passes 'false' as a string, which Python reads as true; "
        r"write --train#dataloader#shuffle True", bundles=ONE),
    Row("inference-boolean-setting-not-true-or-false", "inference",
        lambda ws: ws.infer("--amp", "maybe", names="--amp"), r"setting amp must be true or false", bundles=ONE),
    # inference images (items 6, 14): a damaged gzip stream and an empty file, from the released zip
    Row("inference-gzip-damaged-image", "inference", lambda ws: _damaged_image(ws, "crc"),
        r"cannot read image \S+bad\.nii\.gz: the file is corrupt \(its gzip stream .*CRC check failed", bundles=ONE),
    Row("inference-empty-image", "inference", lambda ws: _damaged_image(ws, "empty"),
        r"image \S+bad\.nii\.gz is empty \(0 bytes\)", bundles=ONE),
    # settings that pass the range check but not the network (item 12): before any work
    Row("train-dropout-out-of-range", "override", lambda ws: ws.train("--dropout", "1.5", names="dropout"),
        r"setting dropout must be a number in \[0, 1\), got 1\.5", bundles=ONE),
    Row("train-roi-size-not-divisible", "override",
        lambda ws: ws.train("--roi_size", "[33, 33, 33]", names="roi_size"), _NOT_DIVISIBLE),
    Row("inference-roi-size-not-divisible", "inference",
        lambda ws: ws.infer("--roi_size", "[33, 33, 33]", names="roi_size"), _NOT_DIVISIBLE, bundles=ONE),
    Row("train-init-from-empty-file", "override", _empty_init_from, r"init_from: \S+empty\.pt is empty \(0 bytes\)",
        bundles=ONE),
    # weights that cannot be loaded (item 10): one line naming the file, before any image is read
    Row("inference-truncated-weights", "checkpoint", lambda ws: _bad_weights(ws, "truncated", "inference"),
        r"inference weights file \S+model\.pt cannot be read: it is truncated or corrupt", bundles=ONE),
    Row("inference-empty-weights", "checkpoint", lambda ws: _bad_weights(ws, "empty", "inference"),
        r"inference weights file \S+model\.pt is empty \(0 bytes\)", bundles=ONE),
    Row("inference-weights-of-another-bundle", "checkpoint", lambda ws: _bad_weights(ws, "other-bundle", "inference"),
        _WEIGHTS_FIT + r" \(UNet\): .* missing .*; they are weights of another network or bundle", bundles=ONE),
    Row("inference-weights-of-another-class-count", "checkpoint",
        lambda ws: _bad_weights(ws, "other-classes", "inference"),
        _WEIGHTS_FIT + r": \d+ tensor\(s\) differ in shape .* another num_classes", bundles=ONE),
    Row("evaluate-truncated-weights", "checkpoint", lambda ws: _bad_weights(ws, "truncated", "evaluate"),
        r"evaluate weights file \S+model\.pt cannot be read: it is truncated or corrupt", bundles=ONE),
    Row("evaluate-weights-of-another-class-count", "checkpoint",
        lambda ws: _bad_weights(ws, "other-classes", "evaluate"),
        _WEIGHTS_FIT + r": \d+ tensor\(s\) differ in shape .* another num_classes", bundles=ONE),
    # --resume true with what the restored state cannot honour (items 8, 11): refused before any data is read
    Row("resume-with-settings-it-cannot-honour", "checkpoint",
        _resume_changed("--learning_rate", "0.5", "--momentum", "0.5", "--weight_decay", "0.1", "--roi_size",
                        "[48, 48, 48]", "--ema_decay", "0.9", names="roi_size=[32, 32, 32]"),
        r"--resume true: \S+checkpoint\.pt was trained with roi_size=\[32, 32, 32\], this run sets \[48, 48, 48\]; a "
        r"resumed run continues the saved state .* pass --roi_size \"\[32, 32, 32\]\" to continue, or train afresh "
        r"with --overwrite true", bundles=ONE,
        also=(r"learning_rate=0\.01, this run sets 0\.5; .* pass --learning_rate 0\.01 to continue",
              r"momentum=0\.9, this run sets 0\.5", r"weight_decay=0\.0001, this run sets 0\.1",
              r"ema_decay=0\.99, this run sets 0\.9")),
    Row("resume-with-another-num-classes", "checkpoint",
        _resume_changed("--num_classes", "2", names="num_classes=3"),
        r"was trained with num_classes=3, this run sets 2", bundles=ONE),
    Row("resume-below-the-saved-iteration", "checkpoint",
        _resume_changed("--max_iterations", "2", names="--max_iterations 2"),
        r"\S+checkpoint\.pt is at iteration 4, beyond --max_iterations 2: pass --max_iterations 4 or more",
        bundles=ONE),
    Row("resume-checkpoint-of-another-bundle", "checkpoint", lambda ws: _resume_broken(ws, "other-bundle"),
        r"\S+checkpoint\.pt was written by the 'supervised' bundle, not 'mean_teacher'", bundles=ONE),
    Row("resume-truncated-checkpoint", "checkpoint", lambda ws: _resume_broken(ws, "truncated"),
        r"checkpoint \S+checkpoint\.pt cannot be read: it is truncated or corrupt", bundles=ONE),
    Row("resume-empty-checkpoint", "checkpoint", lambda ws: _resume_broken(ws, "empty"),
        r"checkpoint \S+checkpoint\.pt is empty \(0 bytes\)", bundles=ONE),
    Row("resume-checkpoint-without-a-run-record", "checkpoint", lambda ws: _resume_broken(ws, "no-record"),
        r"\S+checkpoint\.pt has no record of the bundle and settings it was trained with", bundles=ONE),
]

# ---------------------------------------- one run per ckpt_dir; outputs, records and disks (issue 33: reliability)


def _killed_run(ws: Workspace) -> Call:
    """A run killed mid-way left checkpoint.pt and no model.pt: a fresh run refuses, checkpoint.pt stays."""
    (ws.models / "model.pt").unlink()
    return ws.train("--max_iterations", "2", names=str(ws.models / "checkpoint.pt"))


def _earlier_mean_teacher_run(folder: Path, ws: Workspace) -> Path:
    """What a finished mean_teacher run leaves, plus files of other bundles' runs (model_2.pt, model_best.pt)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.pt", "checkpoint.pt", "teacher.pt", "model_2.pt", "model_best.pt", "model.json"):
        (folder / name).write_bytes(b"the earlier run's " + name.encode())
    return folder


def _overwrite_with_bad_data(ws: Workspace) -> Call:
    """--overwrite true deletes the earlier run's files only when the new run starts training, not before its data
    is read: a typo in --dataset_dir costs nothing."""
    _earlier_mean_teacher_run(ws.models, ws)
    nowhere = ws.root / "nowhere"
    return ws.train("--overwrite", "true", names=str(nowhere), dataset_dir=nowhere)


def _overwrite(ws: Workspace) -> Call:
    earlier = _earlier_mean_teacher_run(ws.root / "earlier", ws)
    return ws.train("--overwrite", "true", "--max_iterations", "1", "--iterations_per_epoch", "1",
                    names=str(earlier), ckpt_dir=earlier, output_dir=ws.root / "logs")


def _overwritten(ws: Workspace, call: Call) -> None:
    files = sorted(p.name for p in (ws.root / "earlier").iterdir())
    assert files == sorted([LOCK_FILE, "checkpoint.pt", "model.json", "model.pt", "teacher.pt"]), files
    assert torch.load(ws.root / "earlier" / "model.pt", weights_only=True).keys() == torch.load(
        ws.root / "earlier" / "checkpoint.pt", weights_only=True)["model"].keys()


def _lock_holder(ws: Workspace) -> int:
    """A live process holding ws.models' lock as a training run does (flock, then its pid); killed after the row."""
    script = ("import fcntl, os, socket, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()} {socket.gethostname()}\\n'.encode()); "
              "print('locked', flush=True); time.sleep(300)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(ws.models / LOCK_FILE)], stdout=subprocess.PIPE,
                              text=True)
    ws.cleanups.append(lambda: (holder.kill(), holder.wait()))
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder.pid


def _second_run(ws: Workspace) -> Call:
    pid = _lock_holder(ws)
    return ws.train("--overwrite", "true", "--max_iterations", "2", names=f"pid {pid}")


def _two_images(ws: Workspace, second: str) -> Path:
    """A folder of images: good.nii.gz and a second one (a copy of it) named ``second``."""
    folder = ws.images()
    image = nib.load(str(folder / "good.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine), str(folder / second))
    return folder


def _record(ws: Workspace) -> dict[str, Any]:
    return json.loads((ws.results / "provenance.json").read_text())


def _inference_disk_full(ws: Workspace) -> Call:
    folder = _two_images(ws, "zz.nii.gz")
    call = ws.infer(names=str(ws.results / "zz_seg.nii.gz"), dataset_dir=folder)
    call.env = ws.faults(call.env, full=str(ws.results), full_match="zz_seg.nii.gz")
    return call


def _stopped_after_one_case(ws: Workspace, call: Call, first: str) -> None:
    """The disk is full, so the record cannot say "failed": it stays at "started" with the one case written."""
    record = _record(ws)
    assert record["status"] == "started" and record["cases"] == 1 and record["finished"] is None, record
    assert [Path(p).name for p in record["inputs"]] == [first], record["inputs"]


def _evaluate_disk_full(ws: Workspace) -> Call:
    call = ws.evaluate(names=str(ws.results / "test_001_seg.nii.gz"))
    call.env = ws.faults(full=str(ws.results), full_match="test_001_seg.nii.gz")
    return call


def _site_folders(ws: Workspace) -> Call:
    """A dataset.json test list naming siteA/patient1.nii.gz and siteB/patient1.nii.gz."""
    root = ws.root / "sites"
    for site, case in (("siteA", "test_000"), ("siteB", "test_001")):
        (root / site).mkdir(parents=True)
        shutil.copy(ws.data / "imagesTs" / f"{case}.nii.gz", root / site / "patient1.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"test": ["siteA/patient1.nii.gz", "siteB/patient1.nii.gz"]}))
    return ws.infer(names=str(root), dataset_dir=root)


def _both_sites_written(ws: Workspace, call: Call) -> None:
    written = sorted(str(p.relative_to(ws.results)) for p in ws.results.rglob("*_seg.nii.gz"))
    assert written == ["siteA/patient1_seg.nii.gz", "siteB/patient1_seg.nii.gz", "test_000_seg.nii.gz"], written
    a, b = (nib.load(str(ws.results / s / "patient1_seg.nii.gz")).get_fdata() for s in ("siteA", "siteB"))
    assert a.shape == b.shape == (32, 32, 32)
    record = _record(ws)
    assert record["status"] == "completed" and record["cases"] == 2 and len(set(record["inputs"])) == 2


def _nested(ws: Workspace) -> Call:
    """Images only in subfolders, a label folder beside them, weights trained at a third of the inputs' spacing,
    and a read-only ckpt_dir (inference writes nothing there)."""
    root = ws.root / "nested"
    for rel in ("a/one.nii.gz", "a/b/two.nii.gz", "labelsTs/three.nii.gz"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ws.data / "imagesTs" / "test_000.nii.gz", root / rel)
    (ws.models / "model.json").write_text(json.dumps({"weights": "model.pt", "training_spacing_mm": [0.5] * 3}))
    call = ws.infer(names=str(root), dataset_dir=root)
    call.env = ws.faults(call.env, readonly=str(ws.models))
    return call


def _nested_written(ws: Workspace, call: Call) -> None:
    written = sorted(str(p.relative_to(ws.results)) for p in ws.results.rglob("*_seg.nii.gz"))
    assert written == ["one_seg.nii.gz", "test_000_seg.nii.gz", "two_seg.nii.gz"], written
    assert _record(ws)["cases"] == 2
    warnings = [line for line in call.stdout.splitlines() if "more than 2x off the training spacing" in line]
    assert len(warnings) == 2, call.stdout[-3000:]
    for line, name in zip(warnings, ("a/one.nii.gz", "a/b/two.nii.gz")):
        assert f"image {ws.root / 'nested' / name} has voxel spacing 1.5 x 1.5 x 1.5 mm" in line, line
        assert f"training spacing 0.5 x 0.5 x 0.5 mm ({ws.models / 'model.json'})" in line, line
    assert "skipped the label folders" in call.stdout and "labelsTs" in call.stdout


def _dangling_link(ws: Workspace) -> Call:
    folder = ws.images()
    (folder / "gone.nii.gz").symlink_to(ws.root / "deleted" / "scan.nii.gz")
    return ws.infer(names=str(folder / "gone.nii.gz"), dataset_dir=folder)


def _full_at_a_checkpoint(ws: Workspace) -> Call:
    fresh = ws.root / "fresh"
    call = ws.train("--max_iterations", "2", "--iterations_per_epoch", "1", names=str(fresh / "checkpoint.pt"),
                    ckpt_dir=fresh, output_dir=ws.root / "logs")
    call.env = ws.faults(full=str(fresh), full_match=".semiseg-checkpoint.pt.*", full_after="1")
    return call


def _first_checkpoint_kept(ws: Workspace, call: Call) -> None:
    fresh = ws.root / "fresh"
    assert torch.load(fresh / "checkpoint.pt", weights_only=True)["trainer"]["iteration"] == 1
    assert sorted(p.name for p in fresh.iterdir()) == sorted([LOCK_FILE, "checkpoint.pt"])  # no model.pt, no temp


def _read_only(ws: Workspace, folder: Callable[[Workspace], Path], run: Callable[[Workspace, str], Call]) -> Call:
    call = run(ws, str(folder(ws)))
    call.env = ws.faults(call.env, readonly=str(folder(ws)))
    return call


RELIABILITY_ROWS: list[Row] = [
    # one run per ckpt_dir: an earlier run's files are replaced only when asked, never by a second run
    Row("train-over-a-killed-run", "checkpoint", _killed_run,
        r"\S+checkpoint\.pt exists: an earlier run stopped before it finished .* Pass --resume true to continue that "
        r"run, or --overwrite true to delete the earlier run's files \(checkpoint\.pt\)", bundles=("supervised",)),
    Row("train-overwrite-with-bad-data-keeps-the-earlier-run", "checkpoint", _overwrite_with_bad_data,
        r"data set directory \S+nowhere does not exist", bundles=("mean_teacher",)),
    Row("train-overwrite-deletes-every-file-of-the-earlier-run", "checkpoint", _overwrite, "", status=0,
        bundles=("mean_teacher",), check=_overwritten),
    Row("train-while-another-run-holds-the-ckpt-dir", "checkpoint", _second_run,
        r"ckpt_dir \S+models is in use by another training run \(pid \d+, holding \S+\.semiseg-run\.lock\)",
        bundles=("supervised",)),
    # outputs: checked first, then a record of what was written, and no output written over another
    Row("inference-disk-full-midway", "disk", _inference_disk_full,
        r"cannot write \S+zz_seg\.nii\.gz: No space left on device \(ENOSPC\); the cases before it were written",
        bundles=("supervised",), changed=("provenance.json",),
        check=lambda ws, call: _stopped_after_one_case(ws, call, "good.nii.gz")),
    Row("evaluate-disk-full-midway", "disk", _evaluate_disk_full,
        r"cannot write \S+test_001_seg\.nii\.gz: No space left on device \(ENOSPC\)", bundles=("supervised",),
        changed=("provenance.json", "test_000_seg.nii.gz", "test_000_metrics.json"),
        check=lambda ws, call: _stopped_after_one_case(ws, call, "test_000.nii.gz")),
    Row("inference-two-inputs-one-output-name", "inference",
        lambda ws: ws.infer(names=str(_two_images(ws, "good.nii") / "good.nii.gz"), dataset_dir=ws.root / "images"),
        r"inference inputs \S+good\.nii and \S+good\.nii\.gz would both be written as good_seg\.nii\.gz",
        bundles=("supervised",)),
    Row("inference-same-file-name-in-two-sites", "inference", _site_folders, "", status=0, bundles=("supervised",),
        changed=("provenance.json",), check=_both_sites_written),
    Row("inference-images-in-subfolders", "inference", _nested, "", status=0, bundles=("supervised",),
        changed=("provenance.json",), check=_nested_written),
    Row("inference-dangling-link", "inference", _dangling_link,
        r"inference input \S+gone\.nii\.gz is a link to \S+scan\.nii\.gz, which does not exist",
        bundles=("supervised",)),
    # read-only folders and full disks: one line naming the folder or file and the errno, before any work
    Row("train-ckpt-dir-read-only", "disk",
        lambda ws: _read_only(ws, lambda w: w.models, lambda w, n: w.train("--resume", "true", names=n)),
        r"ckpt_dir \S+models is not writable: Read-only file system \(EROFS\)", bundles=("supervised",)),
    Row("train-output-dir-read-only", "disk",
        lambda ws: _read_only(ws, lambda w: w.results, lambda w, n: w.train("--resume", "true", names=n)),
        r"output_dir \S+results is not writable: Read-only file system \(EROFS\)", bundles=("supervised",)),
    Row("train-disk-full-at-a-checkpoint", "disk", _full_at_a_checkpoint,
        r"cannot write \S+fresh/checkpoint\.pt: No space left on device \(ENOSPC\); the earlier checkpoint\.pt is "
        r"unchanged\. .* --resume true", bundles=("supervised",), check=_first_checkpoint_kept),
    Row("inference-output-dir-read-only", "disk",
        lambda ws: _read_only(ws, lambda w: w.results, lambda w, n: w.infer(names=n)),
        r"output_dir \S+results is not writable: Read-only file system \(EROFS\)", bundles=("supervised",)),
    Row("inference-working-folder-read-only", "disk",
        lambda ws: _read_only(ws, lambda w: w.bundle_copy,
                              lambda w, n: w.infer(names=str(Path(n) / "eval"), output_dir=False)),
        r"output_dir \S+bundle/eval is not writable \(it does not exist and cannot be created in \S+bundle\): "
        r"Read-only file system \(EROFS\)", bundles=("supervised",)),
]


ROWS: list[Row] = [*DATA_ROWS, *BUNDLE_ROWS, *RELIABILITY_ROWS]

# What a per-bundle row exercises before it fails: the checks in ``initialize``, the data list, pre-processing and
# the paths of the configs it runs. Bundles whose configs agree on all of these take the same path to the same error
# (their networks and methods are never built), so each row runs once per distinct fingerprint: for the first bundle
# of each group in BUNDLES order, plus supervised and mean_teacher always. The smoke tests build every bundle.
_PATH_IDS = ("initialize", "datalist", "preprocessing", "dataset_dir", "bundle_root", "ckpt_dir", "output_dir",
             "model_file", "overwrite", "resume", "in_channels", "num_classes", "nonfinite_voxels")
_KIND_CONFIGS = {"override": ("train.json", "evaluate.json", "inference.json"),
                 "disk": ("train.json", "evaluate.json", "inference.json"),
                 "checkpoint": ("train.json", "evaluate.json", "inference.json"), "inference": ("inference.json",)}
ALWAYS = ("supervised", "mean_teacher")


def fingerprint(bundle: str, kind: str) -> str:
    parts = []
    for name in _KIND_CONFIGS[kind]:
        spec = json.loads(Path(config(bundle, name)).read_text())
        parts.append({key: spec.get(key) for key in _PATH_IDS})
    return json.dumps(parts, sort_keys=True).replace(f"bundles/{bundle}", "bundles/<bundle>")


def representatives(kind: str) -> list[str]:
    """One bundle per distinct fingerprint for ``kind`` (plus ALWAYS), in BUNDLES order."""
    chosen, seen = [], set()
    for bundle in BUNDLES:
        key = fingerprint(bundle, kind)
        if key not in seen or bundle in ALWAYS:
            chosen.append(bundle)
            seen.add(key)
    return chosen


def row_bundles(row: Row) -> Sequence[str | None]:
    """The bundles a row runs for: None for an in-process row, its own ``bundles``, else :func:`representatives`."""
    if row.kind in IN_PROCESS_KINDS:
        return (None,)
    return row.bundles if row.bundles is not None else representatives(row.kind)


MATRIX = [
    pytest.param(row, None, id=row.id) if row.kind in IN_PROCESS_KINDS else pytest.param(row, b, id=f"{row.id}-{b}")
    for row in ROWS
    for b in row_bundles(row)
]


# ------------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def _demo_dir(request: pytest.FixtureRequest) -> Callable[[], Path]:
    """The session's ``tiny_demo`` (tests/conftest.py), generated only when a row first needs it."""
    return lambda: request.getfixturevalue("tiny_demo")


@pytest.fixture(scope="session")
def _released(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The bundle as a user downloads it: packaged (with initial weights) and unpacked by ``monai.bundle.download``."""
    from monai.bundle import download

    made: dict[str, Path] = {}

    def get(bundle: str) -> Path:
        if bundle not in made:
            out = tmp_path_factory.mktemp(f"released_{bundle}")
            parser = ConfigParser()
            parser.read_config(config(bundle, "inference.json"))
            torch.save(parser.get_parsed_content("network_def").state_dict(), out / "model.pt")
            zip_path = package_bundles.package_bundle(REPO / "bundles" / bundle, out / "dist", out / "model.pt")
            download(name=bundle, url=zip_path.as_uri(), bundle_dir=str(out / "hub"))
            made[bundle] = out / "hub" / bundle
        return made[bundle]

    return get


# ---------------------------------------------------------------------------------------------------- the matrix


def _run(call: Call) -> tuple[int, str]:
    """Exit status and error report of a row's call (its standard output goes to ``call.stdout``)."""
    if call.fn is not None:
        try:
            call.fn()
        except Exception as exc:  # the row's error: is it one the command line reports in one line?
            found = user_error(exc)
            assert found is not None, f"{exc!r} is not reported as a semiseg user error (full traceback shown)"
            return 1, format_user_error(found)
        return 0, ""
    assert call.argv is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1", **call.env}
    env.pop("SEMISEG_TRACEBACK", None)
    try:
        done = subprocess.run(call.argv, cwd=call.cwd, env=env, capture_output=True, text=True,
                              timeout=SUBPROCESS_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {SUBPROCESS_TIMEOUT_S} s (the bad input was not refused): {call.argv}")
    call.stdout = done.stdout
    return done.returncode, done.stderr


@pytest.mark.parametrize(("row", "bundle"), MATRIX)
def test_bad_input(row: Row, bundle: str | None, tmp_path: Path, _demo_dir: Callable[[], Path],
                   _released: Callable[[str], Path]) -> None:
    ws = Workspace(tmp_path, bundle, _demo_dir, lambda: _released(str(bundle)))
    try:
        call = row.make(ws)
        before = ws.snapshot(skip=row.changed)
        status, report = _run(call)
    finally:
        for cleanup in ws.cleanups:
            cleanup()

    assert status == row.status, f"exit status {status}, expected {row.status}; stderr:\n{report[-3000:]}"
    if row.status != 0:
        assert _PREFIX in report, f"no '{_PREFIX}' line; stderr:\n{report[-3000:]}"
        head, _, tail = report.partition(_PREFIX)
        assert "Traceback" not in head and "Traceback" not in tail, f"a traceback is shown:\n{report[-3000:]}"
        assert not re.search(r"error", head, re.IGNORECASE), f"another error comes first:\n{head}"
        line = tail.splitlines()[0]
        assert re.search(row.message, line), f"{row.message!r} not in the message:\n{line}"
        assert call.names in line, f"the message does not name {call.names!r}:\n{line}"
        assert "SEMISEG_TRACEBACK=1" in line
        for more in row.also:
            assert re.search(more, tail), f"{more!r} not in the report:\n{tail}"
    after = ws.snapshot(skip=row.changed)
    if row.status != 0 and not row.changed:  # refused: nothing written at all
        assert after == before, "pre-existing checkpoints or results changed, or files were written"
    else:  # a run that wrote results: the earlier ones are still there, unchanged
        assert {path: after.get(path) for path in before} == before, "pre-existing checkpoints or results changed"
    if row.check is not None:
        row.check(ws, call)


def test_matrix_covers_every_kind_and_bundle() -> None:
    ids = [p.id for p in MATRIX]
    assert len(ids) == len(set(ids)), "duplicate row ids"
    assert {row.kind for row in ROWS} >= {"data", "override", "inference", "checkpoint"}
    per_bundle = [row for row in ROWS if row.kind not in IN_PROCESS_KINDS]
    assert len(MATRIX) == len(ROWS) - len(per_bundle) + sum(len(row_bundles(row)) for row in per_bundle)
    assert all(set(row.bundles) <= set(BUNDLES) for row in per_bundle if row.bundles is not None)
    # every bundle is run, or has a run twin with the same fingerprint
    for kind in {row.kind for row in per_bundle if row.bundles is None}:
        covered = {fingerprint(b, kind) for b in representatives(kind)}
        assert all(fingerprint(b, kind) in covered for b in BUNDLES), kind
        assert set(ALWAYS) <= set(representatives(kind))


def test_a_gzip_that_is_only_cut_short_is_still_a_gzip(tmp_path: Path) -> None:
    """The truncation rows test what they claim: the cut file still starts as a gzip stream."""
    path = _write(tmp_path / "x.nii.gz", _image(0, (32, 32, 32)))
    truncate(path)
    with gzip.open(path) as f, pytest.raises(EOFError):
        f.read()
