"""MONAI Label active-learning strategy: the unlabelled image the bundle is least sure about comes next."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from semiseg.active_learning import MEASURES, UncertaintyCache, UncertaintyRanker, bundle_predictor

from .errors import BadParameter, NotFound, NoWeights

logger = logging.getLogger(__name__)

CACHE_FILE = "uncertainty_cache.json"  # per bundle work copy, next to models/
WEIGHTS = "models/model.pt"  # what bundle_predictor loads (lib.workspace.WEIGHTS)


class UncertaintyStrategy(Strategy):
    """Pick the unlabelled image with the highest uncertainty under a bundle (:mod:`semiseg.active_learning`).

    Request fields (``POST /activelearning/uncertainty`` with a JSON body): ``model`` (a bundle name; default
    ``default_model``), ``measure`` (``"entropy"``: mean entropy, ``"aula"``: ``1 - AULA`` for Layer Ensembles;
    default from the bundle: ``aula`` when its inference output has it), ``device``. An unknown model, a bundle
    without weights, an unknown measure or one the bundle's inference does not write is refused before any
    inference (:mod:`lib.errors`: 404, 409, 422, 422). Each unlabelled image is run
    once through the bundle's ``inference.json`` per checkpoint; scores are cached in
    ``<bundle>/uncertainty_cache.json`` and copied into the datastore's image info (``semiseg_uncertainty``).

    Args:
        bundles: bundle name -> its folder (the app's work copies).
        default_model: the bundle used when the request names none.
        device: the default device.
    """

    def __init__(self, bundles: Mapping[str, str], default_model: str, device: str = "cpu") -> None:
        super().__init__("Next image by the bundle's own uncertainty (mean entropy, or 1 - AULA), cached")
        self.bundles = dict(bundles)
        self.default_model = default_model
        self.device = device

    def info(self) -> dict[str, Any]:
        return {**super().info(), "models": sorted(self.bundles), "default_model": self.default_model}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        model = request.get("model") or self.default_model
        if model not in self.bundles:
            raise NotFound(f"unknown model {model!r} for the uncertainty strategy; models: "
                           f"{', '.join(sorted(self.bundles))}")
        bundle = self.bundles[model]
        measure = request.get("measure") or ("aula" if '"aula"' in _inference_keys(bundle) else "entropy")
        if measure not in MEASURES:
            raise BadParameter(f"unknown uncertainty measure {measure!r}; measures: {', '.join(sorted(MEASURES))}")
        key = MEASURES[measure][0]
        if f'"{key}"' not in _inference_keys(bundle):
            raise BadParameter(f"uncertainty measure {measure!r} reads {key!r}, which the inference of bundle "
                               f"{model!r} does not write; use measure 'entropy'")
        if not os.path.isfile(os.path.join(bundle, WEIGHTS)):
            raise NoWeights(f"bundle {model!r} has no trained weights ({os.path.join(bundle, WEIGHTS)} does not "
                            f"exist): train it first (POST /train/{model})")
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        predict, weights = bundle_predictor(bundle, device=request.get("device") or self.device)
        ranker = UncertaintyRanker(
            predict, checkpoint=weights, measure=measure, cache=UncertaintyCache(os.path.join(bundle, CACHE_FILE))
        )
        by_path = {datastore.get_image_uri(image): image for image in images}
        ranking = [(by_path[path], score) for path, score in ranker.rank(by_path)]
        for image, score in ranking:
            datastore.update_image_info(image, {"semiseg_uncertainty": {"model": model, measure: score}})
        best, score = ranking[0]
        logger.info(f"uncertainty ({model}, {measure}): {ranking[:5]}; {ranker.passes} new inference pass(es)")
        return {"id": best, "uncertainty": score, "measure": measure, "model": model,
                "ranking": [{"id": image, "uncertainty": value} for image, value in ranking], "passes": ranker.passes}


def _inference_keys(bundle: str) -> str:
    """The text of the bundle's inference config (to see which uncertainty keys its post-processing writes)."""
    with open(os.path.join(bundle, "configs", "inference.json")) as f:
        return f.read()
