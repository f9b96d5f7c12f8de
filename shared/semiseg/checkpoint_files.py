"""Read a weights or checkpoint file before a run loads it, and say in one line what is wrong with it.

MONAI's ``CheckpointLoader`` loads ``model.pt`` (inference, evaluate) or ``checkpoint.pt`` (``--resume true``) when
the run starts, after the data are read, and a file that is empty, cut short by a full disk or an interrupted copy,
written by another bundle or for another class count ends the run in a 100-line traceback under "Failed to evaluate
ConfigExpression" that names no file. :func:`read_checkpoint` and :func:`state_dict_problem` make the same load
first, in the run's ``initialize`` step, and raise :class:`CheckpointFileError` naming the file and the problem:
empty (0 bytes), truncated or corrupt, holding pickled Python objects (which weights-only loading refuses), or
tensors that do not fit the network (missing, extra, or of another shape).

This module imports only torch and the standard library (and :mod:`semiseg.errors` relatively), so it ships inside
a bundle zip (``scripts/package_bundles.py``) and inference checks ``model.pt`` the same way with MONAI alone.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch

from .errors import SemisegError

__all__ = ["CheckpointFileError", "read_checkpoint", "state_dict_of", "state_dict_problem"]

_SHOWN = 3
_GLOBAL_REFUSAL = "was not an allowed global"  # torch.load(weights_only=True) refusing a pickled object
_DDP_PREFIX = "module."


class CheckpointFileError(SemisegError, ValueError):
    """A weights or checkpoint file that a run cannot load; the message names the file and what is wrong."""


def _reason(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{lines[0][:160] if lines else 'no message'} ({type(err).__name__})"


def read_checkpoint(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a file written by ``torch.save`` with ``weights_only=True``, on the CPU.

    Args:
        path: the file.
        what: what it is, for the message (``"checkpoint"``, ``"weights file"``).

    Returns:
        What the file holds (a state dict, or a dict of state dicts).

    Raises:
        CheckpointFileError: the file does not exist, is empty (0 bytes), is truncated or corrupt (or not a PyTorch
            file), or holds pickled Python objects that weights-only loading refuses.
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise CheckpointFileError(f"{what} {path} does not exist.")
    if os.path.getsize(path) == 0:
        raise CheckpointFileError(
            f"{what} {path} is empty (0 bytes): the save or copy that wrote it was interrupted; use another copy, or "
            "train again."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _GLOBAL_REFUSAL not in str(err):
            raise CheckpointFileError(
                f"{what} {path} cannot be read: it is truncated or corrupt, or not a PyTorch file "
                f"({type(err).__name__}); use another copy, or train again."
            ) from err
        raise CheckpointFileError(
            f"{what} {path} holds pickled Python objects beyond tensors, which are not loaded (weights-only loading "
            "refuses them, as code could run): use weights saved by a semiseg bundle, or save the state dict alone."
        ) from err
    except Exception as err:  # noqa: BLE001  (zip, EOF and unpickler errors all mean "not a readable torch file")
        raise CheckpointFileError(
            f"{what} {path} cannot be read: it is truncated or corrupt, or not a PyTorch file ({_reason(err)}); "
            "use another copy, or train again."
        ) from err


def state_dict_of(checkpoint: Any, key: str = "model") -> Any:
    """The state dict MONAI's ``CheckpointLoader`` takes for ``load_dict={key: network}``: ``checkpoint[key]``, or
    the whole file when it has no ``key`` (a bare state dict, what ``model.pt`` holds)."""
    if isinstance(checkpoint, Mapping) and key in checkpoint:
        return checkpoint[key]
    return checkpoint


def _without_ddp(names: Mapping[str, Any]) -> dict[str, Any]:
    return {k.removeprefix(_DDP_PREFIX): v for k, v in names.items()}


def state_dict_problem(state: Any, network: torch.nn.Module, path: str | os.PathLike[str], what: str = "weights in"
                       ) -> str | None:
    """Why ``state`` cannot be loaded into ``network`` with ``strict=True``, in one line naming ``path``; or None.

    Args:
        state: the state dict read from ``path``.
        network: the network the run loads it into (``@network``).
        path: the file, for the message.
        what: how the message introduces the file (``"weights in"``).

    Returns:
        The problem: not a state dict; tensors of the network missing from the file or tensors the network does not
        have (weights of another network or bundle); tensors of another shape (another ``num_classes``,
        ``in_channels`` or network size). None when every tensor matches.
    """
    path = os.path.abspath(os.fspath(path))
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = f" with keys {sorted(map(str, state))[:5]}" if isinstance(state, Mapping) else ""
        found = type(state).__name__ + keys
        return f"the {what} {path} are not a state dict (parameter names to tensors): the file holds a {found}."
    source, target = _without_ddp(state), _without_ddp(network.state_dict())
    missing = [k for k in target if k not in source]
    extra = [k for k in source if k not in target]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the network's {len(target)} tensors are missing (e.g. {missing[0]})")
        if extra:
            parts.append(f"it has {len(extra)} tensors the network does not (e.g. {extra[0]})")
        return (
            f"the {what} {path} do not fit this bundle's network ({type(network).__name__}): {' and '.join(parts)}; "
            "they are weights of another network or bundle: point --ckpt_dir at this bundle's weights."
        )
    shapes = [k for k in target if tuple(source[k].shape) != tuple(target[k].shape)]
    if shapes:
        shown = "; ".join(
            f"{k}: {tuple(source[k].shape)} in the file, {tuple(target[k].shape)} here" for k in shapes[:_SHOWN]
        )
        return (
            f"the {what} {path} do not fit this bundle's network: {len(shapes)} tensor(s) differ in shape ({shown}); "
            "they were trained with another num_classes, in_channels or network size: set those as in the run that "
            "wrote them, or point --ckpt_dir at weights of this configuration."
        )
    return None
