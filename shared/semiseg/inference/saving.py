"""``SaveCaseImaged``: MONAI's ``SaveImaged`` for evaluate and inference outputs, named per case, failing in one line.

Three changes to ``monai.transforms.SaveImaged``:

- names: by default each case's outputs are named by :func:`semiseg.inference.checks.case_output_name` (flat where
  the input's name is unique, its relative folder where two inputs share a name; ``data_root_dir`` ``"/"``), so two
  inputs never write one file; an ``output_name_formatter`` given explicitly (evaluate's per-case names) wins;
- one writer: NIfTI outputs are written by nibabel's writer (part of "MONAI alone"), whatever else is installed, so
  a case's files are the same with or without ITK, and a failed write is not retried by another library;
- errors: MONAI tries every registered writer and, when all fail, says "cannot find a suitable writer ... install
  the writer libraries", also when the disk is full. When a write fails and the output folder cannot be written
  (:func:`semiseg.files.write_problem`: full, read-only), the error is a
  :class:`~semiseg.files.WriteError` naming the file and the ``errno`` instead.

A subclass of ``SaveImaged``, so MONAI Label, which drops ``SaveImaged`` transforms from a bundle's post-processing
and writes its own result, drops it too. This module imports only MONAI and the standard library (and semiseg
modules relatively), so it ships in a bundle zip (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Hashable, Mapping
from typing import Any

from monai.transforms import SaveImaged

from ..files import WriteError, describe_os_error, write_problem
from .checks import case_output_name

__all__ = ["SaveCaseImaged"]

_WRITER_FAILED = re.compile(r"cannot find a suitable writer for (.+?)\.\n")


class SaveCaseImaged(SaveImaged):
    """``SaveImaged`` with per-case output names and one-line write errors (see the module docstring).

    Args:
        keys: as for ``SaveImaged``.
        output_name_formatter: default :func:`~semiseg.inference.checks.case_output_name`.
        data_root_dir: default ``"/"`` (what :func:`~semiseg.inference.checks.case_output_name` needs).
        writer: default ``"NibabelWriter"`` for ``.nii``/``.nii.gz`` outputs (MONAI's choice for other formats).
        kwargs: ``SaveImaged`` arguments (``output_dir``, ``output_postfix``, ``output_dtype``, ...).
    """

    def __init__(
        self, keys: Any, output_name_formatter: Any = None, data_root_dir: str = "/", writer: Any = None, **kwargs: Any
    ) -> None:
        if writer is None and str(kwargs.get("output_ext", ".nii.gz")).lower() in (".nii", ".nii.gz"):
            writer = "NibabelWriter"
        super().__init__(keys, output_name_formatter=output_name_formatter or case_output_name,
                         data_root_dir=data_root_dir, writer=writer, **kwargs)
        self.output_dir = os.fspath(kwargs.get("output_dir", "./"))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        try:
            return super().__call__(data)
        except RuntimeError as err:
            found = _WRITER_FAILED.search(str(err))
            target = found.group(1) if found else self.output_dir
            problem = write_problem(os.path.dirname(target) if found else target)
            if problem is None:
                raise
            raise WriteError(
                problem.errno,
                f"cannot write {target}: {describe_os_error(problem)}; the cases before it were written "
                f"(provenance.json lists them). Free space on that disk or make {self.output_dir} writable, then run "
                "again.",
            ) from err
