"""Layer Ensembles uncertainty from one forward pass: entropy, variance and mutual-information maps, and AULA.

Kushibar et al., "Layer Ensembles: A Single-Pass Uncertainty Estimation in Deep Learning for Segmentation", MICCAI
2022, Sec. 2.2: the heads of a :class:`~semiseg.networks.LayerEnsembles` network give ``K`` probability maps
``p_1 .. p_K`` per voxel; with ``pbar = mean_h p_h`` and ``C`` classes (docs/architecture.md §3, §5):

- entropy ``H(pbar) = -sum_c pbar_c log(pbar_c + 1e-6) / log C`` (normalised to [0, 1], as the bundles' entropy);
- variance ``Var_h(argmax_c p_hc)``: the population variance over the heads of their predicted labels (the
  reference's segmentation path, ``pianoza/LayerEnsembles@e5a4a88`` ``methods/evaluation_utils.py`` line 98,
  ``np.var(np.argmax(pred, axis=1), axis=0)``), in [0, ((C - 1) / 2)^2]: 0 where the heads agree, larger the
  further apart their labels are (label values as numbers, as the reference);
- mutual information ``H(pbar) - mean_h H(p_h)`` (both normalised by ``log C``, clamped at 0 against rounding);
- AULA, the area under the agreement of adjacent heads' masks (:func:`semiseg.metrics.aula`), per case, and per
  foreground class (:func:`semiseg.metrics.aula_per_class`, the reference's ``aula_<c>``).

The reference computes these over the heads after the first ``SKIP_FIRST_T``, as here over the kept heads. It uses
``log(p + 1e-5)`` without normalising by ``log C`` and min-max normalises each map per image for display; here the
maps keep absolute scales, so they can be compared across cases.

This module imports only torch, MONAI and the standard library (and semiseg modules relatively), so it ships in a
bundle zip and runs with MONAI alone (``scripts/package_bundles.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from ..losses.entropy import entropy_map
from ..metrics.layer_agreement import area_under_agreement, layer_agreement
from .checks import output_name

__all__ = [
    "AULA_KEY", "AULA_PER_CLASS_KEY", "MAP_KEYS", "SEGMENTATION_MODES", "LayerEnsembleUncertaintyd",
    "SaveLayerAgreementd", "uncertainty_maps",
]

AULA_KEY = "aula"
AULA_PER_CLASS_KEY = "aula_per_class"
AGREEMENT_KEY = "layer_agreement"
MAP_KEYS = ("entropy", "variance", "mutual_information")
SEGMENTATION_MODES = ("ensemble", "deepest")  # what the segmentation is: the heads' mean, or the network's own output


def uncertainty_maps(head_probs: torch.Tensor, eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Mean probability and the per-voxel entropy, variance and mutual information of an ensemble of heads.

    Args:
        head_probs: ``(B, K, C, *spatial)`` softmax probabilities of ``K >= 1`` heads.
        eps: added inside the logs.

    Returns:
        ``{"mean": (B, C, ...), "entropy": (B, 1, ...), "variance": (B, 1, ...), "mutual_information": (B, 1, ...)}``.

    Raises:
        ValueError: if ``head_probs`` is not ``(B, K, C, *spatial)`` with ``C >= 2``.
    """
    if head_probs.ndim < 4 or head_probs.shape[2] < 2:
        raise ValueError(
            f"head probabilities must be (B, K heads, C >= 2 classes, *spatial), got shape {tuple(head_probs.shape)}."
        )
    probs = head_probs.float()
    mean = probs.mean(dim=1)
    entropy = entropy_map(mean, eps=eps, dim=1)
    expected = entropy_map(probs, eps=eps, dim=2).mean(dim=1)
    variance = probs.argmax(dim=2).float().var(dim=1, unbiased=False).unsqueeze(1)
    mutual_information = (entropy - expected).clamp_min(0)
    return {"mean": mean, "entropy": entropy, "variance": variance, "mutual_information": mutual_information}


def _like(source: Any, value: torch.Tensor) -> torch.Tensor:
    """``value`` with the metadata of ``source`` (so ``Invertd`` and ``SaveImaged`` treat it like the prediction)."""
    if isinstance(source, MetaTensor):
        return MetaTensor(value, meta=dict(source.meta), applied_operations=list(source.applied_operations))
    return value


class LayerEnsembleUncertaintyd(MapTransform):
    """Split the heads' probabilities, put their mean under the key and add the uncertainty maps and AULA.

    For dictionary post-processing of a :class:`~semiseg.networks.LayerEnsembles` network in ``output="heads"``
    mode (the kept heads' softmax probabilities concatenated along the channels, ``(K * C, *spatial)`` per case),
    in place of ``Activationsd(softmax=True)``: afterwards the key holds the ensemble's mean probability (what
    ``AsDiscreted(argmax=True)`` turns into the segmentation), ``entropy``, ``variance`` and
    ``mutual_information`` hold ``(1, *spatial)`` maps (:func:`uncertainty_maps`), ``aula`` a ``(1,)`` tensor
    (:func:`semiseg.metrics.aula`), ``layer_agreement`` the ``(K - 1,)`` curve it integrates and ``aula_per_class``
    the ``(C - 1,)`` AULA of each foreground class (:func:`semiseg.metrics.aula_per_class`).

    With ``segmentation="deepest"`` the key holds the deepest member's probability instead (the wrapped network's
    own output), while the maps and AULA still come from all kept heads: the plain network's segmentation with the
    layer ensemble's quality control. On the demo, with the heads of bundle 0.1.0 (every encoder and decoder block,
    trained with ``0.5 (CE + Dice)``), the mean over all heads lost about 3 Dice points to the deepest member, mostly
    on small lesions, where the shallow heads are weakest (``docs/results.md``).

    Args:
        keys: the prediction key (one).
        num_classes: classes per head ``C``.
        segmentation: ``"ensemble"`` (the paper: the mean of the kept heads) or ``"deepest"``.
        allow_missing_keys: MONAI's usual flag.

    Raises:
        ValueError: on more than one key, an unknown ``segmentation``, or (when called) channels that are not a
            multiple of ``num_classes``.
    """

    def __init__(
        self, keys: KeysCollection, num_classes: int, segmentation: str = "ensemble", allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"LayerEnsembleUncertaintyd takes one prediction key, got {self.keys}.")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        if segmentation not in SEGMENTATION_MODES:
            raise ValueError(f"segmentation must be one of {SEGMENTATION_MODES}, got {segmentation!r}.")
        self.num_classes = int(num_classes)
        self.segmentation = segmentation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            pred = d[key]
            channels = int(pred.shape[0])
            if channels % self.num_classes:
                raise ValueError(
                    f"{key!r} has {channels} channels, not a multiple of num_classes={self.num_classes}: is the "
                    "network a LayerEnsembles in output='heads' mode?"
                )
            plain = pred.as_tensor() if isinstance(pred, MetaTensor) else torch.as_tensor(pred)
            heads = plain.reshape(1, channels // self.num_classes, self.num_classes, *plain.shape[1:]).float()
            maps = uncertainty_maps(heads)
            d[key] = _like(pred, maps["mean"][0] if self.segmentation == "ensemble" else heads[0, -1])
            for name in MAP_KEYS:
                d[name] = _like(pred, maps[name][0])
            if heads.shape[1] >= 2:
                members = list(heads.unbind(dim=1))
                curve = layer_agreement(members)
                d[AGREEMENT_KEY], d[AULA_KEY] = curve[0], area_under_agreement(curve)
                class_curves = layer_agreement(members, per_class=True)[0]
                d[AULA_PER_CLASS_KEY] = area_under_agreement(class_curves)
            else:  # one head kept: nothing to disagree with
                d[AGREEMENT_KEY], d[AULA_KEY] = torch.ones(0), torch.ones(1)
                d[AULA_PER_CLASS_KEY] = torch.ones(self.num_classes - 1)
        return d


class SaveLayerAgreementd(MapTransform):
    """Write ``<output_dir>/<case>_aula.json`` per case: AULA, the agreement curve and the maps' means.

    ``<case>`` is the case's output name (:func:`semiseg.inference.checks.output_name`: ``test_000`` for
    ``test_000.nii.gz``, ``siteA/p1`` where two inputs are named ``p1``), as ``SaveImaged`` names
    ``<case>_seg.nii.gz``. The file::

        {"image": path, "aula": 0.93, "aula_per_class": [...], "layer_agreement": [...], "heads": K,
         "mean_entropy": ..., "mean_variance": ..., "mean_mutual_information": ...}

    Args:
        keys: the AULA key (``"aula"``, set by :class:`LayerEnsembleUncertaintyd`).
        output_dir: where to write.
        meta_key: the key whose ``filename_or_obj`` metadata names the case (``"pred"`` or ``"image"``).
        allow_missing_keys: MONAI's usual flag.
    """

    def __init__(
        self,
        keys: KeysCollection = AULA_KEY,
        output_dir: str | os.PathLike[str] = ".",
        meta_key: str = "pred",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = os.fspath(output_dir)
        self.meta_key = meta_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        source = d.get(self.meta_key)
        meta = source.meta if isinstance(source, MetaTensor) else d.get(f"{self.meta_key}_meta_dict", {})
        path = str(meta.get("filename_or_obj", "case"))
        case = output_name(path)
        for key in self.key_iterator(d):
            curve = d.get(AGREEMENT_KEY)
            record: dict[str, Any] = {
                "image": path,
                "aula": float(torch.as_tensor(d[key]).reshape(-1)[0]),
                "aula_per_class": [float(v) for v in torch.as_tensor(d.get(AULA_PER_CLASS_KEY, [])).reshape(-1)],
                "layer_agreement": [] if curve is None else [float(v) for v in torch.as_tensor(curve).reshape(-1)],
                "heads": None if curve is None else int(torch.as_tensor(curve).numel()) + 1,
            }
            for name in MAP_KEYS:
                if name in d:
                    record[f"mean_{name}"] = float(torch.as_tensor(d[name]).float().mean())
            target = os.path.join(self.output_dir, f"{case}_{key}.json")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                json.dump(record, f, indent=2)
        return d
