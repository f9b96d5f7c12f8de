"""The method-object interface every semi-supervised method implements (docs/architecture.md §2)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys as Keys
from torch import nn

from semiseg.keys import SSLKeys, missing_state_hint
from semiseg.losses import ssl4mis_dice_ce

__all__ = ["SSLMethod", "LabelledBatch"]

LabelledBatch = tuple[torch.Tensor, torch.Tensor]


class SSLMethod:
    """Base of all methods: ``loss, outputs = method(engine, (images, labels), unlabelled_images)``.

    A method owns its losses; it has no loop, no logging and no I/O. The trainer
    (:class:`semiseg.engines.SemiSupervisedTrainer`) owns the step; handlers own schedules and the teacher and
    publish them on ``engine.state``, which methods read through :meth:`state`.

    Subclasses override :meth:`compute` (and usually only one of its steps). ``outputs`` must hold
    ``CommonKeys.PRED`` (student logits on the labelled batch) and the detached loss terms; every scalar entry is
    logged (:func:`semiseg.engines.loss_terms`), other entries (extra predictions for :meth:`second_phase`, say)
    are carried along.

    Methods with more than one trainable part (a discriminator, a second student, a head) get the extra parts from
    the trainer's ``networks`` (config id ``train#trainer#networks``) through :meth:`network` and declare them in
    :attr:`required_networks`. Parts whose optimisers step with the main one need nothing else. A part trained in
    a second update phase on its own loss (DAN's discriminator, the pattern of MONAI's ``AdversarialTrainer``)
    names its optimiser (``train#trainer#optimizers``) in :attr:`second_phase_optimizer` and implements
    :meth:`second_phase`. A method with state of its own (memory queues, learned thresholds, counters) names the
    attributes in :attr:`_state_attrs` and goes into ``checkpoint#objects`` as ``"method": "@method"``.

    Args:
        supervised_loss: loss on labelled logits and integer labels; default the SSL4MIS ``0.5 (CE + Dice)``
            (:func:`semiseg.losses.ssl4mis_dice_ce`).

    Attributes:
        requires_unlabelled: whether the trainer must feed an unlabelled batch.
        required_state: ``engine.state`` attributes (``SSLKeys`` or plain names, such as a ramped threshold's
            ``param_name``) that handlers must provide; checked when the run starts, so a missing handler fails with
            the handler to add (from the providers registered in :mod:`semiseg.keys`) instead of deep inside the
            first iteration.
        required_networks: names of the extra trainable parts the method reads from ``engine.networks``; the
            trainer checks them when it is built.
        second_phase_optimizer: name of the extra optimiser stepped in the second update phase, or None for a
            method with one update phase.
        _state_attrs: attribute names (tensors or numbers) saved by :meth:`state_dict`.
    """

    requires_unlabelled: bool = True
    required_state: tuple[SSLKeys | str, ...] = ()
    required_networks: tuple[str, ...] = ()
    second_phase_optimizer: str | None = None
    _state_attrs: tuple[str, ...] = ()

    def __init__(self, supervised_loss: torch.nn.Module | None = None) -> None:
        self.supervised_loss = ssl4mis_dice_ce() if supervised_loss is None else supervised_loss

    def attach(self, engine: Engine) -> None:
        """Called by the trainer once: registers the start-of-run check of :attr:`required_state`."""
        if not engine.has_event_handler(self._check_state, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self._check_state)

    def _check_state(self, engine: Engine) -> None:
        missing = [str(key) for key in self.required_state if getattr(engine.state, str(key), None) is None]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__} reads engine.state.{', engine.state.'.join(missing)}, which no handler sets: "
                + "; ".join(missing_state_hint(key) for key in missing)
                + "."
            )

    @staticmethod
    def state(engine: Engine, key: SSLKeys | str) -> Any:
        """Read a handler-provided value from ``engine.state``."""
        return getattr(engine.state, str(key))

    def network(self, engine: Engine, name: str) -> nn.Module:
        """The trainable part ``name`` of the trainer: ``"network"`` (the student) or an extra part.

        Args:
            engine: the trainer (``engine.networks``; an object with only ``network`` serves as the student).
            name: the part's name in ``train#trainer#networks``.

        Returns:
            The module as given to the trainer (DDP-wrapped under multi-GPU training).

        Raises:
            KeyError: if the trainer has no part of that name; the message lists the parts it has.
        """
        networks = getattr(engine, "networks", None)
        if networks is None:
            networks = {"network": engine.network} if hasattr(engine, "network") else {}
        if name not in networks:
            raise KeyError(
                f"{type(self).__name__} asked for the trainable part {name!r}, but the trainer has "
                f"{sorted(networks)}: add it to train#trainer#networks (and to {type(self).__name__}."
                "required_networks, so that the trainer checks it when it is built)."
            )
        return networks[name]

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

    def second_phase(
        self,
        engine: Engine,
        labelled: LabelledBatch,
        unlabelled: torch.Tensor | None,
        outputs: dict[str, Any],
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The loss of the second update phase, called after the main optimiser step.

        Only called when :attr:`second_phase_optimizer` is set. The trainer zeroes that optimiser's gradients
        first (so gradients the part received from the main loss are discarded), runs this under the same autocast
        as the main phase, checks the loss is finite, back-propagates it and steps that optimiser alone.

        Args:
            engine: the trainer.
            labelled: the iteration's ``(images, labels)``.
            unlabelled: the iteration's unlabelled images, or None.
            outputs: the ``outputs`` that :meth:`compute` returned in this iteration (detach what must not
                receive gradient).

        Returns:
            ``(loss, terms)``: the loss to back-propagate and the detached terms to log (merged into
            ``engine.state.output``; include the loss itself under a name of the method's).

        Raises:
            NotImplementedError: unless the method overrides it.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets second_phase_optimizer={self.second_phase_optimizer!r} but does not "
            "implement second_phase()."
        )

    def state_dict(self) -> dict[str, Any]:
        """The attributes named in :attr:`_state_attrs`, for checkpoints (``"method": "@method"``).

        Returns:
            ``{name: value}``; tensors are detached (not copied, like ``nn.Module.state_dict``).

        Raises:
            AttributeError: if a named attribute does not exist.
            TypeError: if one is neither a tensor nor a number.
        """
        state: dict[str, Any] = {}
        for name in self._state_attrs:
            if not hasattr(self, name):
                raise AttributeError(f"{type(self).__name__}._state_attrs names {name!r}, which the method lacks.")
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.detach()
            elif not isinstance(value, numbers.Number):
                raise TypeError(
                    f"{type(self).__name__}.{name} is a {type(value).__name__}; only tensors and numbers can be in "
                    "_state_attrs (checkpoints are loaded with weights_only=True)."
                )
            state[name] = value
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the attributes named in :attr:`_state_attrs` (tensors in place, keeping device and dtype).

        Args:
            state_dict: as returned by :meth:`state_dict`.

        Raises:
            ValueError: on missing or unexpected names, or a tensor of another shape than the current one.
        """
        missing = [name for name in self._state_attrs if name not in state_dict]
        unexpected = [name for name in state_dict if name not in self._state_attrs]
        if missing or unexpected:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: missing {missing}, unexpected {unexpected} "
                f"(the method saves {list(self._state_attrs)})."
            )
        for name in self._state_attrs:
            value, current = state_dict[name], getattr(self, name, None)
            if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                if value.shape != current.shape:
                    raise ValueError(
                        f"{type(self).__name__}.{name}: the checkpoint's tensor has shape {tuple(value.shape)}, "
                        f"the method's {tuple(current.shape)}."
                    )
                with torch.no_grad():
                    current.copy_(value)
            else:
                setattr(self, name, value)

    @staticmethod
    def student_forward(
        network: nn.Module, images: torch.Tensor, unlabelled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits on the labelled and the unlabelled batch from ONE forward pass over both, as the reference code
        does (one set of BatchNorm batch statistics for both; one kernel launch per layer).

        Args:
            network: the student (or any part that takes images).
            images: the labelled batch ``(B_l, C, ...)``.
            unlabelled: the unlabelled batch ``(B_u, C, ...)``.

        Returns:
            ``(logits_labelled, logits_unlabelled)``.
        """
        logits = network(torch.cat([images, unlabelled], dim=0))
        return logits[: images.shape[0]], logits[images.shape[0] :]

    def supervised_forward(
        self, engine: Engine, labelled: LabelledBatch, unlabelled: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The common first step: the student on both batches in one pass (:meth:`student_forward`) and the
        supervised loss on the labelled logits.

        Returns:
            ``(logits_labelled, logits_unlabelled, supervised_loss)``.
        """
        images, labels = labelled
        logits_l, logits_u = self.student_forward(engine.network, images, unlabelled)
        return logits_l, logits_u, self.supervised_loss(logits_l, labels)

    def weighted_loss(
        self,
        engine: Engine,
        logits: torch.Tensor,
        supervised: torch.Tensor,
        unsupervised: torch.Tensor,
        weight_key: SSLKeys | str = SSLKeys.CONSISTENCY_WEIGHT,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """The common last step: ``supervised + w(t) * unsupervised``, ``w(t)`` read from ``engine.state``
        (a ramp handler's value, :data:`SSLKeys.CONSISTENCY_WEIGHT` by default), and the :meth:`outputs` dict with
        ``w(t)`` logged under its state name.

        Returns:
            ``(loss, outputs)``.
        """
        weight = float(self.state(engine, weight_key))
        out = self.outputs(logits, supervised, unsupervised)
        out[str(weight_key)] = torch.tensor(weight)
        return supervised + weight * unsupervised, out

    @staticmethod
    def outputs(logits: torch.Tensor, supervised: torch.Tensor, unsupervised: torch.Tensor | None = None) -> dict:
        """The ``outputs`` dict: labelled logits and the detached loss terms."""
        out: dict[str, Any] = {Keys.PRED: logits, SSLKeys.SUPERVISED_LOSS.value: supervised.detach()}
        if unsupervised is not None:
            out[SSLKeys.UNSUPERVISED_LOSS.value] = unsupervised.detach()
        return out
