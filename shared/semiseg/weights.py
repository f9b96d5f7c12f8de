"""Start a bundle's training from another bundle's weights (``--init_from PATH_OR_ZIP``).

Any semi-supervised bundle can fine-tune a trained model with unlabelled data: ``init_from`` names the weights of
a compatible network, and :func:`load_initial_weights` loads them into ``@network`` when the config builds it, so
every part built from the student afterwards (the EMA teacher is a copy of it) starts from them too::

    python -m monai.bundle run training --config_file bundles/mean_teacher/configs/train.json \\
        --init_from bundles/supervised/models/model.pt

Accepted sources:
- a weights file: a plain state dict (a MONAI model-zoo ``models/model.pt``, or ours), or a checkpoint holding
  one under ``model`` / ``network`` / ``state_dict`` (our ``checkpoint.pt``, Lightning/Ignite files);
- a bundle folder (its ``models/model.pt``);
- a bundle zip as released or downloaded (its ``<name>/models/model.pt``).

Keys are matched as saved, after removing the ``module.`` prefix that ``DistributedDataParallel`` adds; when none
match, a common prefix on either side is tried (a network wrapped in another module). Every tensor of the network
must be found with the same shape unless ``strict=False`` (then the missing ones keep their initialisation and are
listed in the log); a shape mismatch is always an error, naming the first tensors that differ.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from semiseg.errors import SemisegError

__all__ = ["InitWeightsError", "load_initial_weights", "read_state_dict"]

logger = logging.getLogger(__name__)
_NESTED_KEYS = ("model", "network", "state_dict", "model_state_dict")
_SHOWN = 5


class InitWeightsError(SemisegError, ValueError):
    """``init_from`` names weights that cannot start this network (missing, unreadable or of another shape)."""


def _from_file(data: bytes | str, source: str) -> Mapping[str, torch.Tensor]:
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        obj = torch.load(stream, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (pickle, zip and torch errors all mean "not a weights file")
        raise InitWeightsError(f"init_from: {source} is not a readable PyTorch weights file ({err}).") from None
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InitWeightsError(
            f"init_from: {source} holds no state dict (a mapping of parameter names to tensors, directly or under "
            f"one of {list(_NESTED_KEYS)}); found {type(obj).__name__}."
        )
    return obj


def read_state_dict(source: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a weights file, a bundle folder or a bundle zip (see the module docstring).

    Raises:
        InitWeightsError: if the source does not exist, is empty, holds no weights, or is not readable.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        candidate = path / "models" / "model.pt"
        if not candidate.is_file():
            raise InitWeightsError(f"init_from: the folder {path} has no models/model.pt (train the bundle first).")
        path = candidate
    if not path.is_file():
        raise InitWeightsError(f"init_from: {path} does not exist.")
    if path.stat().st_size == 0:
        raise InitWeightsError(
            f"init_from: {path} is empty (0 bytes): the save, copy or download that wrote it was interrupted; use "
            "another copy."
        )
    if zipfile.is_zipfile(path) and not _is_torch_zip(path):
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.endswith("models/model.pt"))
            if not names:
                raise InitWeightsError(
                    f"init_from: the bundle zip {path} has no models/model.pt (it was packaged without weights)."
                )
            state = _from_file(archive.read(names[0]), f"{path}:{names[0]}")
    else:
        state = _from_file(str(path), str(path))
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_torch_zip(path: Path) -> bool:
    """``torch.save`` files are zips too: they hold ``<archive>/data.pkl``."""
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("data.pkl") for n in archive.namelist())


def _align(source: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s keys to ``target``'s when they differ by one common prefix."""
    if set(source) & set(target):
        return source
    src, dst = sorted(source), sorted(target)
    for a, b in ((src, dst), (dst, src)):  # target = prefix + source, or source = prefix + target
        keys_b = set(b)
        for key in b:
            if key.endswith(a[0]):
                prefix = key[: len(key) - len(a[0])]
                if prefix and all(prefix + k in keys_b for k in a[:20]):
                    if a is src:
                        return {prefix + k: v for k, v in source.items()}
                    return {k.removeprefix(prefix): v for k, v in source.items() if k.startswith(prefix)}
    return source


def load_initial_weights(
    network: nn.Module, init_from: str | os.PathLike[str] | None, strict: bool = True
) -> nn.Module:
    """Load ``init_from``'s weights into ``network`` (in place) and return it; ``None`` or ``""`` changes nothing.

    Args:
        network: the bundle's network (``@network``), already on its device.
        init_from: a weights file, bundle folder or bundle zip, or None.
        strict: require every tensor of ``network`` in the source (shapes must match either way).

    Returns:
        ``network``, so a config can write ``$semiseg.weights.load_initial_weights(@network_def.to(@device), ...)``.

    Raises:
        InitWeightsError: on an unreadable source, a shape mismatch, no tensor in common, or (``strict``) tensors
            of the network missing from the source; the message names the tensors.
    """
    if init_from is None or str(init_from) == "":
        return network
    target = network.state_dict()
    source = _align(read_state_dict(init_from), target)
    common = [k for k in target if k in source]
    if not common:
        raise InitWeightsError(
            f"init_from: {init_from} shares no tensor name with this network (it has e.g. {sorted(source)[:3]}, the "
            f"network expects e.g. {sorted(target)[:3]}): it is not weights of this bundle's network."
        )
    mismatched = [k for k in common if source[k].shape != target[k].shape]
    if mismatched:
        shown = "; ".join(
            f"{k}: {tuple(source[k].shape)} in the source, {tuple(target[k].shape)} here" for k in mismatched[:_SHOWN]
        )
        raise InitWeightsError(
            f"init_from: {init_from} does not fit this network: {len(mismatched)} tensor(s) differ in shape ({shown}). "
            "Check num_classes, in_channels and the network's channels against the bundle the weights come from."
        )
    missing = [k for k in target if k not in source]
    if missing and strict:
        raise InitWeightsError(
            f"init_from: {init_from} lacks {len(missing)} of the network's {len(target)} tensors (first: "
            f"{', '.join(missing[:_SHOWN])}); pass init_strict=false to load the {len(common)} that match and keep "
            "the others' initialisation."
        )
    with torch.no_grad():
        for key in common:
            target[key].copy_(source[key])
    unused = len(set(source) - set(target))
    logger.info(
        "init_from: loaded %d of %d tensors from %s%s%s", len(common), len(target), init_from,
        f"; kept the initialisation of {len(missing)} ({', '.join(missing[:_SHOWN])})" if missing else "",
        f"; ignored {unused} tensors the network does not have" if unused else "",
    )
    return network
