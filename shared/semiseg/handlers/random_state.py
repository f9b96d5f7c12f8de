"""Random-number-generator states for checkpoints, so that a resumed run draws what an uninterrupted one would.

A training step draws from four global generators (Python ``random``, NumPy's global ``RandomState``, torch's CPU
generator and, under CUDA, the current device's generator: dropout, the teacher's input noise, the DataLoader's
shuffling and worker seeds) and from the private ``RandomState`` of every MONAI random transform (``R``: crops,
flips), which MONAI's ``DataLoader`` seeds once when it is built (``monai.data.utils.set_rnd``).
:func:`get_random_state` captures all of them in a form ``torch.load(..., weights_only=True)`` accepts (tensors,
ints, floats, lists, dicts; no NumPy objects) and :func:`set_random_state` puts them back (docs/architecture.md §2,
"Checkpoints").

The transforms' generators are found the way ``set_rnd`` seeds them: by walking the attributes of the given objects
(data sets, loaders, transforms) down to every ``monai.transforms.Randomizable``; which transforms share a generator
is recorded too (:func:`get_transform_state`). With ``num_workers > 0`` the transforms run in worker processes,
which the DataLoader seeds from torch's generator when it starts them and the main process's copies are unused:
workers started for every pass draw as in the uninterrupted run, persistent workers (started once) do not.
"""

from __future__ import annotations

import logging
import numbers
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable
from torch.utils.data import DataLoader

__all__ = [
    "RandomStates", "get_random_state", "get_transform_state", "random_transforms", "set_random_state",
    "set_transform_state",
]

_LOGGER = logging.getLogger(__name__)
_MAX_DEPTH = 12
_LEAVES = (torch.Tensor, np.ndarray, str, bytes, numbers.Number, type, torch.nn.Module)


def _encode_numpy(state: tuple) -> dict[str, Any]:
    """``RandomState.get_state()`` (``('MT19937', keys, pos, has_gauss, cached_gaussian)``) as tensors/numbers."""
    name, keys, pos, has_gauss, cached = state
    if name != "MT19937":
        raise ValueError(f"unsupported NumPy bit generator {name!r}: only MT19937 states are checkpointed.")
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _decode_numpy(state: Mapping[str, Any]) -> tuple:
    keys = np.asarray(state["keys"].cpu().numpy(), dtype=np.uint32)
    return ("MT19937", keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _encode_python(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": None if gauss_next is None else float(gauss_next)}


def _decode_python(state: Mapping[str, Any]) -> tuple:
    internal = tuple(int(v) for v in state["internal"].tolist())
    return (int(state["version"]), internal, state["gauss_next"])


def random_transforms(*objects: Any) -> list[Randomizable]:
    """The MONAI random transforms (``Randomizable`` objects) reachable from ``objects``, each once.

    Walks attributes (and lists/tuples of objects) like ``monai.data.utils.set_rnd``, depth-first in attribute
    order, so the same config gives the same list in every process; a DataLoader is entered through its data set
    only. Tensors, arrays, networks and plain values are not entered.

    Args:
        objects: data loaders, data sets or transforms.

    Returns:
        The transforms, nested ones (a crop's inner cropper) included, in a deterministic order.
    """
    found: list[Randomizable] = []
    seen: set[int] = set()

    def walk(obj: Any, depth: int) -> None:
        if depth > _MAX_DEPTH or obj is None or isinstance(obj, _LEAVES) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, DataLoader):  # not its iterator, workers or generator: the transforms are in the data set
            walk(obj.dataset, depth + 1)
            return
        if isinstance(obj, (list, tuple)):
            for item in obj:
                walk(item, depth + 1)
            return
        if isinstance(obj, Randomizable):
            found.append(obj)
        attributes = getattr(obj, "__dict__", None)
        if not attributes:
            return
        for key, value in list(attributes.items()):
            if not key.startswith("__"):
                walk(value, depth + 1)

    for obj in objects:
        walk(obj, 0)
    return found


def get_transform_state(transforms: list[Randomizable]) -> dict[str, Any]:
    """The generators of ``transforms`` and which transform uses which (several may share one).

    MONAI transforms replace their generator when re-seeded (a crop re-seeds its inner cropper on every call) and
    fall back on the class-level ``Randomizable.R`` until they are seeded, so the state records the sharing
    (``owners``: a generator index per transform) and which generators are that class-level one
    (``class_level``), not just one state per transform.

    Args:
        transforms: as :func:`random_transforms` returns them.

    Returns:
        ``{"generators", "owners", "class_level"}``.
    """
    index: dict[int, int] = {}
    generators: list[dict[str, Any]] = []
    class_level: list[bool] = []
    owners: list[int] = []
    for transform in transforms:
        gen = transform.R
        if id(gen) not in index:
            index[id(gen)] = len(generators)
            generators.append(_encode_numpy(gen.get_state()))
            class_level.append("R" not in vars(transform))
        owners.append(index[id(gen)])
    return {"generators": generators, "owners": owners, "class_level": class_level}


def set_transform_state(transforms: list[Randomizable], state: Mapping[str, Any]) -> bool:
    """Give ``transforms`` the generators :func:`get_transform_state` recorded, shared as they were.

    Args:
        transforms: as :func:`random_transforms` returns them (the same config as when the state was taken).
        state: as :func:`get_transform_state` returns it.

    Returns:
        False (and nothing changed) if the number of transforms differs from the state's.
    """
    owners = [int(i) for i in state["owners"]]
    if len(owners) != len(transforms):
        return False
    made: dict[int, np.random.RandomState] = {}
    for transform, owner in zip(transforms, owners):
        if owner not in made:
            if state["class_level"][owner]:
                made[owner] = type(transform).R  # the class-level generator every unseeded transform shares
            else:
                made[owner] = np.random.RandomState()
            made[owner].set_state(_decode_numpy(state["generators"][owner]))
        if state["class_level"][owner]:
            vars(transform).pop("R", None)
        else:
            transform.R = made[owner]
    return True


def get_random_state(*data: Any) -> dict[str, Any]:
    """Every generator a training step draws from, loadable with ``torch.load(..., weights_only=True)``.

    Args:
        data: objects whose MONAI random transforms are included (the labelled and unlabelled data loaders).

    Returns:
        ``{"python", "numpy", "torch", "cuda", "transforms"}``: ``cuda`` is a list with the state of the current CUDA
        device (the process's device under DDP; other devices are not touched, so no context is created on them),
        empty when CUDA was never initialised in this process; ``transforms`` as :func:`get_transform_state` gives it.
    """
    cuda = [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "python": _encode_python(random.getstate()),
        "numpy": _encode_numpy(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "transforms": get_transform_state(random_transforms(*data)),
    }


def set_random_state(state: Mapping[str, Any], *data: Any, logger: logging.Logger | None = None) -> None:
    """Restore what :func:`get_random_state` captured; parts the state lacks are left as they are.

    Args:
        state: as returned by :func:`get_random_state` (loaded from a checkpoint).
        data: the same kind of objects :func:`get_random_state` was given.
        logger: where to warn about parts that cannot be restored (a different number of CUDA devices or of
            random transforms); default this module's logger.
    """
    logger = logger or _LOGGER
    if "python" in state:
        random.setstate(_decode_python(state["python"]))
    if "numpy" in state:
        np.random.set_state(_decode_numpy(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    cuda = list(state.get("cuda") or [])
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda[0].cpu())  # the current device's
    elif cuda:
        logger.warning("checkpoint has a CUDA generator state but this process has no CUDA device: random draws "
                       "on the GPU of the interrupted run are not reproduced.")
    if "transforms" in state:
        transforms = random_transforms(*data)
        if not set_transform_state(transforms, state["transforms"]):
            logger.warning(
                f"checkpoint has the generator states of {len(state['transforms']['owners'])} random transform(s) "
                f"but the data pipeline has {len(transforms)}: the transforms' generators are not restored (was the "
                "transform chain changed?), so augmentations differ from the interrupted run."
            )


class RandomStates:
    """The random generators as a ``checkpoint#objects`` entry (``state_dict`` / ``load_state_dict``).

    :class:`semiseg.engines.SemiSupervisedTrainer` already keeps them in its own ``state_dict``; use this for other
    engines.

    Args:
        data: objects whose MONAI random transforms are included (data loaders, data sets).
    """

    def __init__(self, data: Iterable[Any] = ()) -> None:
        self.data = list(data)

    def state_dict(self) -> dict[str, Any]:
        """See :func:`get_random_state`."""
        return get_random_state(*self.data)

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """See :func:`set_random_state`."""
        set_random_state(state_dict, *self.data)
