"""MONAI Label app serving semiseg's bundles (``make label``; see docs/monailabel.md).

Every ``bundles/<name>`` with a ``train.json`` and an ``inference.json`` becomes a model (``/infer/<name>``), a
semi-supervised trainer (``/train/<name>``) whose unlabelled list is MONAI Label's unlabelled images, and a choice
for the ``uncertainty`` active-learning strategy (``/activelearning/uncertainty``). The app works on copies of
the bundles under ``--conf work_dir`` (default ``scripts/monailabel_app/model/``): configs come from the
repository at every start, weights stay in the copy.

``--conf`` settings: ``bundles`` (comma-separated names; default all), ``bundles_dir`` (default the repository's
``bundles/``), ``work_dir``, ``device`` (default ``cuda`` when available, else ``cpu``), ``al_model`` (the bundle
the strategy uses when a request names none; default ``mean_teacher`` when served).

A request's error is answered with a 4xx status and its one-line ``semiseg: error:`` message as the JSON body's
``detail`` (:mod:`lib.errors`): 404 for an unknown image, model or strategy, 409 for a bundle without weights, 422
for a bad parameter. A bundle trained after the server started is served by ``/infer`` from its first request.
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
from lib.errors import NotFound, NoWeights, answered  # noqa: E402
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

    def bundle_path(self, model: str | None) -> str | None:
        """The bundle folder MONAI Label passes to a queued task; an unknown model is refused here, before the task
        is queued (404)."""
        with answered(f"task for model {model!r}"):
            if model and model not in self.bundles:
                raise NotFound(f"unknown model {model!r}: the bundles served are {', '.join(sorted(self.bundles))}")
            return super().bundle_path(model)

    def _infer_task(self, model: Any) -> None:
        """Check that ``model`` can infer; a bundle whose weights appeared since the start gets its infer task now.

        Raises:
            NotFound: for a model that is not a served bundle.
            NoWeights: for a bundle without ``models/model.pt``.
        """
        if model not in self.bundles:
            raise NotFound(f"unknown model {model!r}: the bundles served are {', '.join(sorted(self.bundles))}")
        weights = Path(self.bundles[model]) / workspace.WEIGHTS
        if not weights.is_file():
            raise NoWeights(f"bundle {model!r} has no trained weights ({weights} does not exist): train it first "
                            f"(POST /train/{model}), then infer")
        if model not in self._infers:
            self._infers[model] = SemisegInferTask(self.bundles[model], self.conf)

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's infer, then each uncertainty map of a datastore image saved there under its tag
        (``entropy``); the result JSON says where (``params["uncertainty"][key]["label_tag"]``). An unknown model
        or image id, a bundle without weights or a bad parameter is answered with its status (:mod:`lib.errors`)."""
        with answered(f"infer {request.get('model')!r}"):
            self._infer_task(request.get("model"))
            image = request.get("image")
            from_datastore = isinstance(image, str) and not os.path.exists(image)
            store = datastore if datastore is not None else self.datastore()
            if from_datastore and not store.get_image_uri(image):
                raise NotFound(f"image {image!r} is not in the datastore ({len(store.list_images())} images; GET "
                               "/datastore/?output=all lists their ids)")
            return self._infer_and_store_maps(request, datastore, from_datastore)

    def next_sample(self, request: dict[str, Any]) -> dict[str, Any]:
        """MONAI Label's active-learning request; an unknown strategy is a 404, the strategy's errors are answered
        with their status (:mod:`lib.errors`)."""
        strategy = request.get("strategy") or "random"
        with answered(f"activelearning {strategy!r}"):
            if strategy not in self._strategies:
                raise NotFound(f"unknown strategy {strategy!r}: the strategies are "
                               f"{', '.join(sorted(self._strategies))}")
            return super().next_sample(request)

    def _infer_and_store_maps(self, request: dict[str, Any], datastore: Any, from_datastore: bool) -> dict[str, Any]:
        """MONAI Label's infer; each uncertainty map of a datastore image is moved into the datastore."""
        image = request.get("image")
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
