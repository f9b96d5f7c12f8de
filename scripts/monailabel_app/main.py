"""MONAI Label app serving semiseg's bundles (``make label``; see docs/monailabel.md).

Every ``bundles/<name>`` with a ``train.json`` and an ``inference.json`` becomes a model (``/infer/<name>``), a
semi-supervised trainer (``/train/<name>``) whose unlabelled list is MONAI Label's unlabelled images, and a choice
for the ``uncertainty`` active-learning strategy (``/activelearning/uncertainty``). The app works on copies of
the bundles under ``--conf work_dir`` (default ``scripts/monailabel_app/model/``): configs come from the
repository at every start, weights stay in the copy.

``--conf`` settings: ``bundles`` (comma-separated names; default all), ``bundles_dir`` (default the repository's
``bundles/``), ``work_dir``, ``device`` (default ``cuda`` when available, else ``cpu``), ``al_model`` (the bundle
the strategy uses when a request names none; default ``mean_teacher`` when served).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.random import Random

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR) not in sys.path:  # `lib` must import in MONAI Label's training subprocess too
    sys.path.insert(0, str(APP_DIR))

from lib import workspace  # noqa: E402
from lib.infer import SemisegInferTask  # noqa: E402
from lib.strategy import UncertaintyStrategy  # noqa: E402
from lib.train import SemisegTrainTask  # noqa: E402

logger = logging.getLogger(__name__)

REPO_ROOT = APP_DIR.parents[1]
ENTROPY_TAG = "entropy"


class SemisegApp(MONAILabelApp):
    """The MONAI Label app: one infer and one train task per bundle, uncertainty and random strategies."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        bundles_dir = Path(conf.get("bundles_dir") or REPO_ROOT / "bundles").resolve()
        self.work_dir = Path(conf.get("work_dir") or Path(app_dir) / "model").resolve()
        self.device = conf.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        names = workspace.bundle_names(bundles_dir, conf.get("bundles", ""))
        self.bundles = {name: str(workspace.prepare(bundles_dir, self.work_dir, name)) for name in names}
        wanted = conf.get("al_model") or ("mean_teacher" if "mean_teacher" in self.bundles else names[0])
        if wanted not in self.bundles:
            raise ValueError(f"al_model {wanted!r} is not served; bundles: {sorted(self.bundles)}.")
        self.al_model = wanted
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="semiseg",
            description="Semi-supervised 3D segmentation bundles (semiseg) with uncertainty maps",
            version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            task = SemisegInferTask(path, self.conf)
            if task.is_valid():
                infers[name] = task
            else:
                logger.warning(f"{name}: no {path}/{workspace.WEIGHTS} yet: train it (/train/{name}) to infer.")
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        return {name: SemisegTrainTask(path, self.conf) for name, path in self.bundles.items()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"uncertainty": UncertaintyStrategy(self.bundles, self.al_model, self.device), "random": Random()}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, then each uncertainty map of a datastore image saved there under its tag
        (``entropy``); the result JSON says where (``params["uncertainty"][key]["label_tag"]``)."""
        image = request.get("image")
        from_datastore = isinstance(image, str) and not os.path.exists(image)
        result = super().infer(request, datastore)
        maps = (result.get("params") or {}).get("uncertainty", {})
        store = datastore if datastore is not None else self.datastore()
        for key, info in maps.items():
            path = info.get("file")
            if from_datastore and request.get("save_uncertainty", True) and path and os.path.exists(path):
                label_id = store.save_label(image, path, key, {"model": request.get("model"), "mean": info["mean"]})
                os.remove(path)
                info.update(file=None, label_tag=key, label_id=label_id,
                            url=f"/datastore/label?label={label_id}&tag={key}")
        return result
