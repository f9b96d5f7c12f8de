"""The method-object interface every semi-supervised method implements (DESIGN.md §2)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys

from semiseg.keys import SSLKeys
from semiseg.losses import ssl4mis_dice_ce

__all__ = ["SSLMethod", "LabelledBatch"]

LabelledBatch = tuple[torch.Tensor, torch.Tensor]


class SSLMethod:
    """Base of all methods: ``loss, outputs = method(engine, (images, labels), unlabelled_images)``.

    A method owns its losses (and extra networks such as a discriminator or a second student); it has no loop, no
    logging and no I/O. The trainer (:class:`semiseg.engines.SemiSupervisedTrainer`) owns the step; handlers own
    schedules and the teacher and publish them on ``engine.state``, which methods read through :meth:`state`.

    Subclasses override :meth:`compute` (and usually only one of its steps). ``outputs`` must hold
    ``CommonKeys.PRED`` (student logits on the labelled batch) and the detached loss terms under ``SSLKeys``.

    Args:
        supervised_loss: loss on labelled logits and integer labels; default the SSL4MIS ``0.5 (CE + Dice)``
            (:func:`semiseg.losses.ssl4mis_dice_ce`).

    Attributes:
        requires_unlabelled: whether the trainer must feed an unlabelled batch.
        required_state: ``engine.state`` attributes (``SSLKeys``) that handlers must provide; checked when the run
            starts so a missing handler fails with a clear message instead of deep inside the first iteration.
    """

    requires_unlabelled: bool = True
    required_state: tuple[SSLKeys, ...] = ()

    def __init__(self, supervised_loss: torch.nn.Module | None = None) -> None:
        self.supervised_loss = ssl4mis_dice_ce() if supervised_loss is None else supervised_loss

    def attach(self, engine: Engine) -> None:
        """Called by the trainer once: registers the start-of-run check of :attr:`required_state`."""
        if not engine.has_event_handler(self._check_state, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._check_state)

    def _check_state(self, engine: Engine) -> None:
        missing = [key.value for key in self.required_state if getattr(engine.state, key.value, None) is None]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} reads engine.state.{', engine.state.'.join(missing)}, which no handler sets: "
                "add the handler to train#handlers (EMATeacher sets 'teacher', ConsistencyRampUp sets "
                "'consistency_weight')."
            )

    @staticmethod
    def state(engine: Engine, key: SSLKeys) -> Any:
        """Read a handler-provided value from ``engine.state``."""
        return getattr(engine.state, key.value)

    def __call__(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.requires_unlabelled and unlabelled is None:
            raise ValueError(f"{type(self).__name__} needs an unlabelled batch but got None.")
        return self.compute(engine, labelled, unlabelled)

    def compute(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The method's loss; see the class docstring."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute().")

    @staticmethod
    def outputs(logits: torch.Tensor, supervised: torch.Tensor, unsupervised: torch.Tensor | None = None) -> dict:
        """The ``outputs`` dict: labelled logits and the detached loss terms."""
        out: dict[str, Any] = {Keys.PRED: logits, SSLKeys.SUPERVISED_LOSS.value: supervised.detach()}
        if unsupervised is not None:
            out[SSLKeys.UNSUPERVISED_LOSS.value] = unsupervised.detach()
        return out
