"""Semi-supervised bundle training from MONAI Label: the datastore's labelled and unlabelled images, its budget."""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from semiseg.data.validation import validate_datalist

from .errors import BadParameter

logger = logging.getLogger(__name__)

UNLABELLED_DATA = "train#unlabelled#dataset#data"  # the template's unlabelled list (docs/architecture.md §1)
SUMMARY_FILE = "monailabel_train.json"  # under the bundle's output_dir (<work copy>/eval)
FLAGS = ("pretrained", "multi_gpu")  # request parameters that are booleans


def _integer(value: Any) -> int | None:
    """``value`` as an int when it is one (a whole float, or its decimal text), else None (a bool is not one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+").isdigit():
        return int(value)
    return None


def check_train_request(name: str, request: dict[str, Any]) -> dict[str, Any]:
    """The request's training parameters checked, with integers given as text converted (before any data is read).

    ``max_epochs`` and ``iterations_per_epoch``: integers >= 1; ``val_split``: a fraction in [0, 1) or -1 (no
    validation); ``pretrained``, ``multi_gpu``: booleans (``true`` / ``false`` as text too); ``device``: a torch
    device name.

    Args:
        name: the bundle, for the messages.
        request: MONAI Label's train request.

    Returns:
        A copy of the request with the integers and booleans converted.

    Raises:
        BadParameter: naming every bad parameter, its value and what is expected.
    """
    checked, problems = dict(request), []
    for key in ("max_epochs", "iterations_per_epoch"):
        if request.get(key) is None:
            continue
        number = _integer(request[key])
        if number is None or number < 1:
            problems.append(f"/train/{name}: {key} must be an integer >= 1, got {request[key]!r}")
        else:
            checked[key] = number
    if request.get("val_split") is not None:
        value = request["val_split"]
        try:
            fraction = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            fraction = math.nan
        if not (0.0 <= fraction < 1.0 or fraction == -1.0):
            problems.append(f"/train/{name}: val_split must be a fraction in [0, 1) of the labelled images (0 or -1: "
                            f"no validation), got {value!r}")
        else:
            checked["val_split"] = fraction
    for key in FLAGS:
        value = request.get(key)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            checked[key] = value.strip().lower() == "true"
        else:
            problems.append(f"/train/{name}: {key} must be true or false, got {value!r}")
    if request.get("device") is not None:
        try:
            torch.device(str(request["device"]))
        except RuntimeError:
            problems.append(f"/train/{name}: device must be a torch device name (cpu, cuda, cuda:0), got "
                            f"{request['device']!r}")
    if problems:
        raise BadParameter(problems)
    return checked


class SemisegTrainTask(BundleTrainTask):
    """MONAI Label's bundle train task, made semi-supervised and self-contained.

    On top of what :class:`BundleTrainTask` overrides (``bundle_root``, ``device``, ``train#trainer#max_epochs``,
    the labelled list ``train#dataset#data``, ``validate#dataset#data``, a ``CheckpointLoader`` for
    ``models/model.pt`` when ``pretrained``), every run gets:

    - the unlabelled list (``train#unlabelled#dataset#data``) from the datastore's unlabelled images (those
      without a final label), and ``datalist`` set to the same lists, so nothing reads ``dataset_dir`` against the
      server's working directory; a semi-supervised bundle fails in one line when there are none;
    - ``num_labelled`` / ``num_val`` matching the lists (``val_split`` 0 or -1: no validation);
    - ``overwrite: true`` (retraining replaces ``models/model.pt``, which the bundles otherwise refuse) and
      ``resume: false``;
    - ``iterations_per_epoch`` from the request when given (the budget is ``max_epochs x epoch_length``; the ramps
      and the learning-rate schedule read it when the run starts);
    - the request's parameters checked before any data is read (:func:`check_train_request`): a bad one ends the
      task with one ``semiseg: error:`` line naming it, the last line ``GET /train/`` shows;
    - every list checked file by file (:func:`semiseg.data.validation.validate_datalist`) before training;
    - a :class:`lib.summary.TrainingSummary` handler writing ``<bundle>/eval/monailabel_train.json``.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, **kwargs)
        self._datastore: Datastore | None = None
        self._request: dict[str, Any] = {}

    def config(self) -> dict[str, Any]:
        options = super().config()
        options["iterations_per_epoch"] = int(self.bundle_config.get_parsed_content("iterations_per_epoch"))
        return options

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        request = check_train_request(os.path.basename(self.bundle_path), request)
        self._request, self._datastore = dict(request), datastore
        try:
            return super().__call__(request, datastore)
        finally:
            self._request, self._datastore = {}, None

    @property
    def semi_supervised(self) -> bool:
        """Whether the bundle trains on unlabelled images (the supervised baseline removes ``train#unlabelled``)."""
        return UNLABELLED_DATA in self.bundle_config

    def summary_file(self) -> str:
        return os.path.join(self.bundle_path, "eval", SUMMARY_FILE)

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        if self._datastore is None:
            raise RuntimeError("SemisegTrainTask._update_overrides runs inside __call__ only.")
        name = os.path.basename(self.bundle_path)
        labelled = list(overrides.get("train#dataset#data") or [])
        validation = list(overrides.get("validate#dataset#data") or [])
        if not labelled:
            raise ValueError(
                f"{name}: MONAI Label has no labelled training images (images with a label under labels/final, "
                f"less the val_split share); save at least one final label first."
            )
        taken = {os.path.realpath(item["image"]) for item in labelled + validation}
        unlabelled = [
            {"image": uri}
            for uri in map(self._datastore.get_image_uri, self._datastore.get_unlabeled_images())
            if os.path.realpath(uri) not in taken
        ]
        if self.semi_supervised and not unlabelled:
            raise ValueError(f"{name} is semi-supervised, but MONAI Label has no unlabelled images to train on.")
        num_classes = int(self.bundle_config.get_parsed_content("num_classes"))
        in_channels = int(self.bundle_config.get_parsed_content("in_channels"))
        validate_datalist(labelled + validation, num_classes=num_classes, in_channels=in_channels)
        validate_datalist(unlabelled, require_label=False, in_channels=in_channels)

        overrides["validate#dataset#data"] = validation
        overrides["datalist"] = {"labelled": labelled, "unlabelled": unlabelled, "validation": validation, "test": []}
        if self.semi_supervised:
            overrides[UNLABELLED_DATA] = unlabelled
        overrides["num_labelled"] = len(labelled)
        overrides["num_val"] = len(validation)
        overrides["overwrite"] = True
        overrides["resume"] = False
        if self._request.get("iterations_per_epoch"):
            overrides["iterations_per_epoch"] = int(self._request["iterations_per_epoch"])
        # MONAI Label passes a device name; the trainer reads ``device.type`` (a JSON-safe expression, so the
        # multi-GPU path can still export the config)
        overrides["device"] = f"$torch.device({str(overrides['device'])!r})"
        overrides["train#handlers"] = [
            *overrides["train#handlers"],
            {
                "_target_": "lib.summary.TrainingSummary",
                "output_file": self.summary_file(),
                "labelled": [item["image"] for item in labelled],
                "unlabelled": [item["image"] for item in unlabelled] if self.semi_supervised else [],
                "validation": [item["image"] for item in validation],
            },
        ]
        logger.info(
            f"{name}: {len(labelled)} labelled, {len(unlabelled) if self.semi_supervised else 0} unlabelled, "
            f"{len(validation)} validation images from MONAI Label; "
            f"max_epochs {overrides.get('train#trainer#max_epochs')}"
        )
        return overrides
