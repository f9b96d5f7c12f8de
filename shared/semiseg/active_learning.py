"""Uncertainty-driven active learning: rank unlabelled images by a bundle's own uncertainty, one pass per image.

The next image to annotate is the one the current model is least sure about (uncertainty sampling; Settles,
"Active Learning Literature Survey", 2009, Sec. 3.1, with the entropy of Eq. 2 averaged over voxels). The score
comes from the bundle's own inference pipeline (``configs/inference.json``: pre-processing, inferer, network,
post-processing), so it is the uncertainty the bundle reports:

- ``"entropy"``: the mean of the normalised per-voxel entropy map under the ``entropy`` key (every semiseg bundle
  writes it; docs/architecture.md §3);
- ``"aula"``: ``1 - AULA`` under the ``aula`` key, the Layer Ensembles uncertainty (Kushibar et al., MICCAI 2022:
  a low area under the layer-agreement curve means the heads disagree, see :func:`semiseg.metrics.aula`);
- or any callable from the pipeline's output dict to a float (higher = more uncertain).

Each image is run once per checkpoint: scores are cached in a JSON file keyed by the image (path, size,
modification time), the checkpoint's sha256 and the measure, so a new model rescores everything and an unchanged
one rescores nothing. Needs MONAI and torch only; the MONAI Label strategy (``scripts/monailabel_app``) wraps it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .inference.provenance import file_sha256

__all__ = [
    "MEASURES",
    "UncertaintyCache",
    "UncertaintyRanker",
    "bundle_predictor",
    "image_key",
    "uncertainty_score",
]

Predictor = Callable[[str], Mapping[str, Any]]
Measure = Callable[[Mapping[str, Any]], float]


def _mean_entropy(output: Mapping[str, Any]) -> float:
    return float(torch.as_tensor(output["entropy"]).float().mean())


def _one_minus_aula(output: Mapping[str, Any]) -> float:
    return 1.0 - float(torch.as_tensor(output["aula"]).float().mean())


MEASURES: dict[str, tuple[str, Measure]] = {"entropy": ("entropy", _mean_entropy), "aula": ("aula", _one_minus_aula)}
"""Measure name -> (the output key it reads, score function); higher scores are more uncertain."""


def uncertainty_score(output: Mapping[str, Any], measure: str | Measure = "entropy") -> float:
    """The uncertainty of one image from its inference output.

    Args:
        output: the pipeline's output dict (``entropy``: a ``(1, *spatial)`` map in [0, 1]; ``aula``: a scalar or
            ``(1,)`` tensor in [0, 1]).
        measure: ``"entropy"`` (mean entropy), ``"aula"`` (``1 - AULA``) or a callable ``output -> float``.

    Returns:
        The score; higher is more uncertain.

    Raises:
        ValueError: for an unknown measure name, or an output without the key the measure reads.
    """
    if callable(measure):
        return float(measure(output))
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; use one of {sorted(MEASURES)} or a callable.")
    key, fn = MEASURES[measure]
    if key not in output:
        raise ValueError(
            f"uncertainty measure {measure!r} reads {key!r}, which the inference output lacks (keys: "
            f"{sorted(map(str, output))}): does the bundle's inference.json post-processing write it?"
        )
    return fn(output)


def image_key(path: str | os.PathLike[str]) -> str:
    """A cache key for an image file: its real path, size and modification time (ns); a rewritten file gets a
    new key without the file being read.

    Args:
        path: the image file.

    Returns:
        ``"<realpath>|<size>|<mtime_ns>"``.

    Raises:
        FileNotFoundError: if the file does not exist.
    """
    real = os.path.realpath(path)
    stat = os.stat(real)
    return f"{real}|{stat.st_size}|{stat.st_mtime_ns}"


class UncertaintyCache:
    """Scores on disk, keyed by image key, checkpoint hash and measure; written atomically after each update.

    Args:
        path: the JSON file (created on the first :meth:`put`); ``None`` keeps the cache in memory.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._scores: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except json.JSONDecodeError:  # a damaged cache only costs a rescoring
                loaded = {}
            self._scores = {str(k): float(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}

    @staticmethod
    def key(image: str, checkpoint_hash: str, measure: str) -> str:
        return f"{checkpoint_hash}|{measure}|{image}"

    def get(self, image: str, checkpoint_hash: str, measure: str) -> float | None:
        return self._scores.get(self.key(image, checkpoint_hash, measure))

    def put(self, image: str, checkpoint_hash: str, measure: str, score: float) -> None:
        self._scores[self.key(image, checkpoint_hash, measure)] = float(score)
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".uncertainty-", suffix=".partial", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self._scores, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self._scores)


class UncertaintyRanker:
    """Rank images by uncertainty: one ``predict`` call per image and checkpoint, then the cache.

    Args:
        predict: ``image path -> output dict`` (one forward pass; :func:`bundle_predictor` builds it from a bundle).
        checkpoint: the weights ``predict`` uses; its sha256 keys the cache (``None``: key ``"none"``, for tests
            and weight-free predictors).
        measure: see :func:`uncertainty_score`; a callable is cached under its ``__name__``.
        cache: where scores are kept (default: in memory).
    """

    def __init__(
        self,
        predict: Predictor,
        checkpoint: str | os.PathLike[str] | None = None,
        measure: str | Measure = "entropy",
        cache: UncertaintyCache | None = None,
    ) -> None:
        if not callable(measure) and measure not in MEASURES:
            raise ValueError(f"unknown uncertainty measure {measure!r}; use one of {sorted(MEASURES)} or a callable.")
        self.predict = predict
        self.measure = measure
        self.measure_name = measure if isinstance(measure, str) else getattr(measure, "__name__", "custom")
        self.checkpoint_hash = file_sha256(checkpoint) if checkpoint is not None else "none"
        self.cache = cache if cache is not None else UncertaintyCache()
        self.passes = 0

    def score(self, image: str | os.PathLike[str]) -> float:
        """The image's uncertainty, from the cache or one ``predict`` pass."""
        key = image_key(image)
        cached = self.cache.get(key, self.checkpoint_hash, self.measure_name)
        if cached is not None:
            return cached
        self.passes += 1
        value = uncertainty_score(self.predict(str(image)), self.measure)
        self.cache.put(key, self.checkpoint_hash, self.measure_name, value)
        return value

    def rank(self, images: Iterable[str | os.PathLike[str]]) -> list[tuple[str, float]]:
        """``[(image, score), ...]``, most uncertain first (ties: by path, for a stable order).

        Raises:
            ValueError: if ``images`` is empty.
        """
        scored = [(str(image), self.score(image)) for image in images]
        if not scored:
            raise ValueError("no images to rank: every image is labelled (or the list is empty).")
        return sorted(scored, key=lambda item: (-item[1], item[0]))


def bundle_predictor(
    bundle_root: str | os.PathLike[str],
    model_file: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[Predictor, Path]:
    """``image path -> output dict`` through a bundle's ``inference.json``, with MONAI alone.

    Runs the config's ``preprocessing``, its ``inferer`` over its ``network`` (eval mode, the weights of
    ``model_file``) and its ``postprocessing`` without the transforms that save files, so the output holds what
    the bundle writes: ``pred`` and its uncertainty keys (``entropy``, ``aula`` for Layer Ensembles).

    Args:
        bundle_root: the bundle folder (``configs/inference.json``).
        model_file: the weights (default: ``<bundle_root>/models/model.pt``); a state dict, or ``{"model": ...}``.
        device: where the network runs.

    Returns:
        ``(predict, model_file)``.

    Raises:
        FileNotFoundError: if the config or the weights are missing.
    """
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    root = Path(bundle_root)
    config_file = root / "configs" / "inference.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file} does not exist: is {root} a bundle folder?")
    weights = Path(model_file) if model_file is not None else root / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}: train the bundle first (or pass model_file).")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(root)
    parser["device"] = torch.device(device)
    network = parser.get_parsed_content("network")
    state = torch.load(weights, map_location=device, weights_only=True)
    target = network.module if hasattr(network, "module") else network
    target.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    network.eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    inferer = parser.get_parsed_content("inferer")
    post = parser.get_parsed_content("postprocessing")
    post_transforms = list(post.transforms) if isinstance(post, Compose) else list(post)
    postprocessing = Compose([t for t in post_transforms if not type(t).__name__.startswith("Save")])

    @torch.no_grad()
    def predict(image: str) -> Mapping[str, Any]:
        data = preprocessing({"image": image})
        data["pred"] = inferer(data["image"][None].to(device), network)[0]
        return postprocessing(data)

    return predict, weights
