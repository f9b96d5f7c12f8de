"""Bundle inference for MONAI Label that also returns the bundle's uncertainty map."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monailabel.tasks.infer.bundle import BundleConstants, BundleInferTask
from monailabel.transform.post import Restored
from monailabel.transform.writer import Writer

logger = logging.getLogger(__name__)

UNCERTAINTY_KEYS = ("entropy",)  # the maps a semiseg inference.json writes besides ``pred`` (architecture.md §1)
LABEL_DTYPE = "uint8"  # the label file's type (MONAI Label's writer keeps the float32 of the post-processing)


class InferenceConstants(BundleConstants):
    """Build the network from ``inference.json``'s ``network`` (what ``monai.bundle run`` infers with: a Layer
    Ensembles bundle sets its output mode there), not ``network_def``."""

    def key_network_def(self) -> str:
        return "network"


class _RestoreIfPresent:
    """MONAI Label's ``Restored`` (back to the image's grid) for each uncertainty key the bundle produced."""

    def __init__(self, keys: Sequence[str], ref_image: str) -> None:
        self.keys = tuple(keys)
        self.restore = {key: Restored(keys=key, ref_image=ref_image, mode="trilinear") for key in self.keys}

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if key in d:
                d = self.restore[key](d)
        return d


class SemisegInferTask(BundleInferTask):
    """MONAI Label's bundle infer task; the uncertainty maps of the bundle's post-processing reach the client.

    The segmentation is what MONAI Label always returns (the label file), written as uint8 like the label of
    ``monai.bundle run`` (unless the request sets ``result_dtype``). Each uncertainty map (``entropy``) is
    restored to the image grid like the label, written as a float32 image, and described in the result JSON:
    ``params["uncertainty"]["entropy"] = {"mean": ..., "max": ..., "file": <path on the server>}``. The app
    (``main.py``) moves a map of a datastore image into the datastore under the label tag ``entropy``, where a
    client reads it with ``GET /datastore/label?label=<image id>&tag=entropy``.

    Args:
        path: the bundle folder.
        conf: the app's ``--conf`` settings.
        uncertainty_keys: the post-processing keys to return.
        kwargs: :class:`BundleInferTask` arguments.
    """

    def __init__(
        self, path: str, conf: dict[str, str], uncertainty_keys: Sequence[str] = UNCERTAINTY_KEYS, **kwargs: Any
    ) -> None:
        self.uncertainty_keys = tuple(uncertainty_keys)
        super().__init__(path, conf, const=InferenceConstants(), **kwargs)

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        post = list(super().post_transforms(data))
        if self.add_post_restore:
            post.append(_RestoreIfPresent(self.uncertainty_keys, ref_image=self.key_image))
        return post

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[Any, Any]:
        if dtype is None and data.get("result_dtype") is None:
            dtype = LABEL_DTYPE  # as `monai.bundle run` writes it; a request's `result_dtype` still wins
        result_file, result_json = super().writer(data, extension, dtype)
        maps = {}
        for key in self.uncertainty_keys:
            if key not in data:
                continue
            values = torch.as_tensor(data[key]).float()
            data[f"{key}_dtype"] = "float32"
            map_file, _ = Writer(label=key, ref_image=self.key_pred, key_dtype=f"{key}_dtype")(data)
            maps[key] = {"mean": float(values.mean()), "max": float(values.max()), "file": map_file}
        if maps:
            result_json = dict(result_json or {})
            result_json["uncertainty"] = maps
        return result_file, result_json
