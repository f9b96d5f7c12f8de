"""The two students of Cross Pseudo Supervision: their different initialisations and their averaged prediction.

Chen et al., "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision", CVPR 2021, Sec. 3.1 (two
networks of the same architecture, initialised differently); SSL4MIS ``train_cross_pseudo_supervision_3D.py``
initialises the first with Kaiming-normal and the second with Xavier-normal convolution weights (docs/architecture.md
§3).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoint_files import CheckpointFileError, read_checkpoint, state_dict_of, state_dict_problem
from ..settings import flag

__all__ = ["INIT_SCHEMES", "init_conv_weights", "SoftmaxAverage", "inference_network"]

INIT_SCHEMES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "kaiming_normal": nn.init.kaiming_normal_,
    "xavier_normal": nn.init.xavier_normal_,
}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def init_conv_weights(network: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise a network in place as SSL4MIS's ``kaiming_normal_init_weight`` / ``xavier_normal_init_weight``.

    Every convolution's weight (``nn.Conv1d/2d/3d``; not transposed convolutions, as in the reference) is drawn with
    ``torch.nn.init.kaiming_normal_`` or ``xavier_normal_`` with their default arguments; every BatchNorm gets weight
    1 and bias 0. Biases and all other parameters keep their values.

    Args:
        network: the module to re-initialise.
        scheme: ``"kaiming_normal"`` or ``"xavier_normal"``.

    Returns:
        ``network`` itself, so a config can write ``init_conv_weights(@network_def, 'kaiming_normal').to(@device)``.

    Raises:
        ValueError: on an unknown scheme.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init_conv_weights: scheme must be one of {sorted(INIT_SCHEMES)}, got {scheme!r}.")
    init = INIT_SCHEMES[scheme]
    with torch.no_grad():
        for module in network.modules():
            if isinstance(module, _CONVS):
                init(module.weight)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
                module.weight.fill_(1.0)
                module.bias.zero_()
    return network


class SoftmaxAverage(nn.Module):
    """``log(mean_k softmax(net_k(x)))``: several segmentation networks as one whose softmax is their mean softmax.

    ``softmax(log p) = p`` for probabilities ``p``, so the bundles' post-processing (softmax, entropy, argmax)
    applied to this output works on the averaged probabilities unchanged. The log is taken of probabilities clamped
    at the dtype's smallest normal number, so a class no network predicts stays finite for sliding-window blending.

    Args:
        networks: the networks (same input and output shapes), e.g. CPS's two students.

    Raises:
        ValueError: if ``networks`` is empty.
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(networks) == 0:
            raise ValueError("SoftmaxAverage needs at least one network.")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.stack([torch.softmax(net(x).float(), dim=1) for net in self.networks]).mean(dim=0)
        return torch.log(mean.clamp_min(torch.finfo(mean.dtype).tiny))


def inference_network(
    student: nn.Module, second: nn.Module | None, ensemble: Any, second_file: str | os.PathLike[str] | None = None
) -> nn.Module:
    """What a CPS bundle infers with: the first student, or with ``ensemble`` both students' mean softmax.

    Args:
        student: the first student (``models/model.pt``).
        second: the second student (``models/model_2.pt``), moved to the first one's device when used; may be None
            when ``ensemble`` is off.
        ensemble: the bundle setting ``ensemble_students``, read by :func:`semiseg.settings.flag` (a bool, or
            ``true`` / ``false`` / 1 / 0 / ``yes`` / ``no`` as the command line passes it).
        second_file: the second student's weights (``@model_file_2``), which the config loads into ``second``; when
            given and ``ensemble`` is on, checked first (:mod:`semiseg.checkpoint_files`: missing, empty, truncated,
            or not fitting ``second``), so a bad file fails in one line naming it before anything is written.

    Returns:
        ``student``, or ``SoftmaxAverage([student, second])``.

    Raises:
        SettingError: if ``ensemble`` is not a boolean setting.
        CheckpointFileError: if ``second_file`` cannot be loaded into ``second``.
        ValueError: if it is on without a second student.
    """
    if not flag(ensemble, "ensemble_students"):
        return student
    if second is None:
        raise ValueError("ensemble_students is on but there is no second student (network_2) to average with.")
    if second_file is not None:
        what = "--ensemble_students true: the second student's weights file"
        problem = state_dict_problem(state_dict_of(read_checkpoint(second_file, what)), second, second_file)
        if problem is not None:
            raise CheckpointFileError(f"--ensemble_students true: {problem} (nothing was run)")
    device = next(student.parameters(), torch.empty(0)).device
    return SoftmaxAverage([student, second.to(device)])
