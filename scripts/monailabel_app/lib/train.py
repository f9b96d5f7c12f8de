"""Semi-supervised bundle training from MONAI Label: the datastore's labelled and unlabelled images, its budget."""

from __future__ import annotations

import logging
import os
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleTrainTask

from semiseg.data.validation import validate_datalist

logger = logging.getLogger(__name__)

UNLABELLED_DATA = "train#unlabelled#dataset#data"  # the template's unlabelled list (docs/architecture.md §1)
SUMMARY_FILE = "monailabel_train.json"  # under the bundle's output_dir (<work copy>/eval)


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
