"""The one training loop of semiseg: a MONAI SupervisedTrainer that feeds a labelled and an unlabelled batch."""

from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from semiseg.engines.outputs import image_filenames, loss_terms
from semiseg.keys import SSLIterationEvents
from semiseg.methods.base import LabelledBatch, SSLMethod

__all__ = ["SemiSupervisedTrainer", "UnlabelledCycle"]

MAIN_NETWORK = "network"
MAIN_OPTIMIZER = "optimizer"


class UnlabelledCycle:
    """Endless iterator over an unlabelled loader, independent of the labelled loader's epochs.

    Each pass over the loader is one unlabelled "epoch"; a ``DistributedSampler`` gets ``set_epoch`` so every pass
    is shuffled differently on every rank. ``epoch`` and ``position`` (batches drawn from the current pass) are
    checkpointed through the trainer's ``state_dict``; after :meth:`load_state_dict` the next draw replays pass
    ``epoch`` and skips the ``position`` batches already drawn (loading them: at most one pass of extra loading on
    resume), so a resumed run sees the same unlabelled batches as an uninterrupted one wherever the sampler's order
    is reproducible (``DistributedSampler``, no shuffling, a seeded generator). A pass that was drawn to its end is
    not replayed.

    Args:
        loader: the unlabelled DataLoader (or any re-iterable).

    Raises:
        ValueError: if the loader yields nothing.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self.position = 0
        self._iter: Iterator | None = None

    def _restart(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        self._iter = iter(self.loader)

    def _next_pass(self) -> None:
        self.epoch += 1
        self.position = 0
        self._restart()

    def _resume(self) -> None:
        """First draw, or first after ``load_state_dict``: open pass ``epoch`` at ``position``."""
        try:
            length: int | None = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            length = None
        if self.position and length is not None and self.position >= length:
            self._next_pass()
            return
        self._restart()
        for _ in range(self.position):
            try:
                next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                self._next_pass()
                return

    def __iter__(self) -> UnlabelledCycle:
        return self

    def __next__(self) -> Any:
        if self._iter is None:
            self._resume()
        try:
            batch = next(self._iter)  # type: ignore[arg-type]
        except StopIteration:
            self._next_pass()
            try:
                batch = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("the unlabelled data loader yields no batch: its data set is empty.") from None
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": passes started before the current one, "position": batches drawn from the current one}``."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`; the next draw opens the saved pass at the saved position.

        Raises:
            ValueError: if ``epoch`` or ``position`` is missing or not an integer >= 0.
        """
        for key in ("epoch", "position"):
            value = state_dict.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"unlabelled cycle state {key!r} must be an integer >= 0, got {value!r}.")
        self.epoch, self.position = int(state_dict["epoch"]), int(state_dict["position"])
        self._iter = None


def _check_parts(
    kind: str, parts: Mapping[str, Any], main_name: str, main: Any, cls: type, config_id: str
) -> dict[str, Any]:
    """Validate extra ``networks`` / ``optimizers``: names, types, no object twice, the main one not among them."""
    checked: dict[str, Any] = {}
    seen: dict[int, str] = {id(main): main_name}
    for name, part in parts.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{config_id} names must be non-empty strings, got {name!r}.")
        if name == main_name:
            raise ValueError(
                f"{config_id} may not use the name {main_name!r}: that is the main {kind[:-1]} "
                f"(train#trainer#{main_name}); give the extra one another name."
            )
        if not isinstance(part, cls):
            raise TypeError(f"{config_id}[{name!r}] must be a {cls.__module__}.{cls.__name__}, got {type(part)!r}.")
        if id(part) in seen:
            raise ValueError(
                f"{config_id}[{name!r}] is the same object as {seen[id(part)]!r}: each {kind[:-1]} must appear once."
            )
        seen[id(part)] = name
        checked[name] = part
    return checked


class SemiSupervisedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` whose iteration is ``loss, outputs = method(engine, labelled, unlabelled)``.

    One iteration takes one labelled batch from ``train_data_loader`` (Ignite's data, which defines epochs) and one
    batch from ``unlabelled_data_loader``, which cycles independently (its batch size sets the labelled/unlabelled
    ratio). The method object (:class:`semiseg.methods.SSLMethod`) computes the forward passes and the loss; this
    class owns zero-grad, AMP, backward, the optimiser steps, the non-finite-loss check and MONAI's iteration events,
    so MONAI handlers (StatsHandler, LrScheduleHandler, CheckpointSaver, ValidationHandler, ...) work unchanged.
    Cross-cutting state (teacher, consistency weight) comes from handlers through ``engine.state``
    (docs/architecture.md §2).

    One iteration:

    1. every trainable part (``engine.networks``) is put in train mode (validation puts the main one in eval);
    2. main phase: the main optimiser and every extra optimiser except the second phase's are zeroed,
       ``loss, outputs = method(...)`` runs under autocast, ``FORWARD_COMPLETED`` and ``LOSS_COMPLETED`` fire,
       the loss is checked to be finite, back-propagated once (``BACKWARD_COMPLETED``) and all those optimisers
       step (CPS-style separate optimisers on one summed loss);
    3. second phase, only when ``method.second_phase_optimizer`` is set (a discriminator, on the pattern of
       MONAI's ``AdversarialTrainer``): that optimiser is zeroed (so gradients its part got from the main loss are
       dropped), ``loss2, terms2 = method.second_phase(engine, labelled, unlabelled, outputs)`` runs under the same
       autocast, ``terms2`` are merged into ``engine.state.output``, the loss is checked, back-propagated and that
       optimiser alone steps; ``SSLIterationEvents.SECOND_PHASE_COMPLETED`` fires;
    4. ``MODEL_COMPLETED`` fires once every update of the iteration is applied.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits on the labelled batch), ``loss``
    and the method's terms (``SSLKeys`` and any other scalar, all logged by :func:`semiseg.engines.loss_terms`).
    ``decollate`` defaults to False: training needs no per-item post-processing, and skipping it saves a copy per
    iteration.

    AMP (``amp=True``) autocasts on the trainer's device type (``cuda``, ``cpu``, ...) with ``amp_kwargs``
    (``{"dtype": torch.bfloat16}`` for bf16; the default dtype is the device's autocast default, fp16 on CUDA).
    Under fp16 each update phase has its own ``torch.amp.GradScaler``: ``self.scaler`` (MONAI's attribute) for the
    main phase, ``self.scalers[name]`` for the second phase's optimiser; bf16 needs none. The scalers are made
    once, here (MONAI's ``Trainer.run`` would replace ``self.scaler`` on every call), and :meth:`state_dict` adds
    their states and the unlabelled cycle's position to Ignite's engine state, so ``"trainer": "@train#trainer"``
    in ``checkpoint#objects`` restores them with MONAI's ``CheckpointLoader``.

    Args:
        device: the device to train on.
        max_epochs: epochs to run; iterations = ``max_epochs * epoch_length``.
        train_data_loader: labelled DataLoader yielding ``{"image", "label"}`` batches.
        network: the student network.
        optimizer: the student's optimiser.
        method: the semi-supervised method object.
        unlabelled_data_loader: unlabelled DataLoader yielding ``{"image"}`` batches; required when
            ``method.requires_unlabelled``.
        epoch_length: iterations per epoch (Ignite); default ``len(train_data_loader)``.
        nan_policy: ``"raise"`` (default): a non-finite loss stops training before the backward pass, with an error
            naming the iteration, the loss terms and the batch's files, so the weights stay intact and the final
            checkpoint (``save_final``) is the last good state. ``"skip"``: log and skip the update (a non-finite
            main loss skips the whole iteration, a non-finite second-phase loss that phase's update).
        decollate: see the class docstring.
        networks: extra trainable parts by name (config id ``train#trainer#networks``): a discriminator, a second
            student, a head. Exposed with the main one as ``engine.networks`` (``"network"`` is the main one, so it
            is not a valid extra name); methods get them with ``method.network(engine, name)``.
        optimizers: extra optimisers by name (config id ``train#trainer#optimizers``), exposed with the main one as
            ``engine.optimizers`` (``"optimizer"`` is the main one). The one named ``method.second_phase_optimizer``
            steps in the second phase, the others with the main one.
        kwargs: other ``SupervisedTrainer`` arguments (``train_handlers``, ``amp``, ``amp_kwargs``,
            ``key_train_metric``, ...).

    Raises:
        TypeError: if ``method`` is not an ``SSLMethod``, or an extra part or optimiser has the wrong type.
        ValueError: if the method needs unlabelled data and none is given, on an unknown ``nan_policy``, on
            ``accumulation_steps`` other than 1, on a reserved or repeated part/optimiser, on a parameter held by
            two optimisers, or if ``networks`` / ``optimizers`` lack a part the method declares
            (``method.required_networks``, ``method.second_phase_optimizer``).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        method: SSLMethod,
        unlabelled_data_loader: Iterable | DataLoader | None = None,
        epoch_length: int | None = None,
        nan_policy: str = "raise",
        decollate: bool = False,
        networks: Mapping[str, nn.Module] | None = None,
        optimizers: Mapping[str, torch.optim.Optimizer] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, SSLMethod):
            raise TypeError(f"method must be a semiseg.methods.SSLMethod, got {type(method).__name__}.")
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}.")
        if kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError(
                f"SemiSupervisedTrainer does not accumulate gradients; accumulation_steps must be 1, got "
                f"{kwargs['accumulation_steps']!r}."
            )
        if method.requires_unlabelled:
            if unlabelled_data_loader is None:
                raise ValueError(
                    f"{type(method).__name__} needs unlabelled data but no unlabelled_data_loader was given "
                    "(bundle config id 'train#unlabelled#dataloader')."
                )
            dataset = getattr(unlabelled_data_loader, "dataset", None)
            if dataset is not None and len(dataset) == 0:
                raise ValueError(
                    f"{type(method).__name__} needs unlabelled data but the unlabelled data set is empty: check "
                    "'num_labelled' (all training cases labelled?) and the data set's unlabelled/test lists."
                )
        extra_networks = _check_parts(
            "networks", networks or {}, MAIN_NETWORK, network, nn.Module, "train#trainer#networks"
        )
        extra_optimizers = _check_parts(
            "optimizers", optimizers or {}, MAIN_OPTIMIZER, optimizer, torch.optim.Optimizer, "train#trainer#optimizers"
        )
        self._check_method_parts(method, extra_networks, extra_optimizers)
        self._check_parameters(network, optimizer, extra_networks, extra_optimizers)

        event_names = list(kwargs.pop("event_names", None) or []) + [SSLIterationEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=method,
            epoch_length=epoch_length,
            decollate=decollate,
            event_names=event_names,
            **kwargs,
        )
        self.method = method
        self.nan_policy = nan_policy
        self.networks: dict[str, nn.Module] = {MAIN_NETWORK: self.network, **extra_networks}
        self.optimizers: dict[str, torch.optim.Optimizer] = {MAIN_OPTIMIZER: self.optimizer, **extra_optimizers}
        second = method.second_phase_optimizer
        self._joint_optimizers = [opt for name, opt in extra_optimizers.items() if name != second]

        self.amp_device_type = self.state.device.type if self.state.device is not None else "cpu"
        self.amp_dtype: torch.dtype | None = None
        self.scalers: dict[str, torch.amp.GradScaler] = {}
        if self.amp:
            self.amp_dtype = self.amp_kwargs.get("dtype", torch.get_autocast_dtype(self.amp_device_type))
            if self.amp_dtype == torch.float16:
                self.scaler = torch.amp.GradScaler(self.amp_device_type)
                if second is not None:
                    self.scalers[second] = torch.amp.GradScaler(self.amp_device_type)

        self.unlabelled_data_loader = unlabelled_data_loader
        self.unlabelled = UnlabelledCycle(unlabelled_data_loader) if unlabelled_data_loader is not None else None
        method.attach(self)

    @staticmethod
    def _check_method_parts(
        method: SSLMethod, networks: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> None:
        name = type(method).__name__
        missing = [part for part in method.required_networks if part not in networks]
        if missing:
            example = ", ".join(f'"{part}": "@{part}"' for part in missing)
            raise ValueError(
                f"{name} needs the trainable part(s) {missing}, which train#trainer#networks does not have (it has "
                f"{sorted(networks)}): set train#trainer#networks, e.g. {{{example}}}."
            )
        second = method.second_phase_optimizer
        if second is not None and second not in optimizers:
            raise ValueError(
                f"{name} trains a part in a second update phase with the optimiser {second!r}, which "
                f"train#trainer#optimizers does not have (it has {sorted(optimizers)}): set "
                f'train#trainer#optimizers, e.g. {{"{second}": "@{second}_optimizer"}}.'
            )

    @staticmethod
    def _check_parameters(
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        networks: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
    ) -> None:
        """No parameter in two optimisers (it would be stepped twice); warn on trainable parts nobody optimises."""
        owner: dict[int, str] = {}
        for opt_name, opt in {MAIN_OPTIMIZER: optimizer, **optimizers}.items():
            for group in opt.param_groups:
                for param in group["params"]:
                    if owner.get(id(param), opt_name) != opt_name:
                        raise ValueError(
                            f"a parameter of shape {tuple(param.shape)} is in both optimisers {owner[id(param)]!r} "
                            f"and {opt_name!r}: it would be stepped twice per iteration."
                        )
                    owner[id(param)] = opt_name
        for net_name, net in {MAIN_NETWORK: network, **networks}.items():
            orphans = [n for n, p in net.named_parameters() if p.requires_grad and id(p) not in owner]
            if orphans:
                warnings.warn(
                    f"trainable part {net_name!r} has {len(orphans)} trainable parameter tensor(s) that no optimiser "
                    f"holds (first: {orphans[0]!r}); they will not be trained.",
                    stacklevel=3,
                )

    def run(self) -> None:  # type: ignore[override]
        """Run training (Ignite ``Engine.run`` through MONAI's ``Workflow.run``), resuming from the current state.

        Skips MONAI's ``Trainer.run``, which only replaces ``self.scaler`` by a new CUDA grad scaler on every call:
        that would discard a scale restored from a checkpoint and ignore the trainer's device.
        """
        Workflow.run(self)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.amp_device_type, **self.amp_kwargs)

    def _next_unlabelled(self) -> torch.Tensor | None:
        if self.unlabelled is None or not self.method.requires_unlabelled:
            return None
        batch = next(self.unlabelled)
        images, _ = default_prepare_batch(batch, self.state.device, self.non_blocking, **self.to_kwargs)
        return images

    def _is_finite(self, loss: torch.Tensor, terms: Mapping[str, Any], batchdata: Any, what: str) -> bool:
        """True if ``loss`` is finite; else raise (``nan_policy="raise"``) or log and return False (``"skip"``)."""
        if torch.isfinite(loss.detach()).all():
            return True
        message = (
            f"non-finite {what} {float(loss.detach()):.4g} at iteration {self.state.iteration} "
            f"(epoch {self.state.epoch}); "
            f"terms {loss_terms(dict(terms))}; labelled batch {image_filenames(batchdata) or '(no file names)'}. The "
            "update was not applied. Common causes: a learning rate too high for this data, an image with NaN/inf "
            "voxels, or a constant image that intensity normalisation divides by zero."
        )
        if self.nan_policy == "raise":
            raise FloatingPointError(message)
        self.logger.warning(message + " Skipping this update (nan_policy='skip').")
        return False

    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One semi-supervised step: main phase (method loss, all joint optimisers), then the second phase if any."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, labels = default_prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        unlabelled = self._next_unlabelled()

        for network in self.networks.values():
            network.train()
        main_optimizers = [self.optimizer, *self._joint_optimizers]
        for optimizer in main_optimizers:
            optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            loss, outputs = self.method(self, (images, labels), unlabelled)
        self.state.output = {Keys.IMAGE: images, Keys.LABEL: labels, **outputs, Keys.LOSS: loss}
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        self.fire_event(IterationEvents.LOSS_COMPLETED)

        if not self._is_finite(loss, outputs, batchdata, "loss"):
            self.fire_event(IterationEvents.MODEL_COMPLETED)
            return self.state.output

        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            for optimizer in main_optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            for optimizer in main_optimizers:
                optimizer.step()

        if self.method.second_phase_optimizer is not None:
            self._second_phase(batchdata, (images, labels), unlabelled, outputs)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output

    def _second_phase(
        self, batchdata: Any, labelled: LabelledBatch, unlabelled: torch.Tensor | None, outputs: dict[str, Any]
    ) -> None:
        """Zero, forward, check, backward and step the second phase's optimiser alone."""
        name = self.method.second_phase_optimizer
        assert name is not None  # checked by the caller
        optimizer, scaler = self.optimizers[name], self.scalers.get(name)
        optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            loss, terms = self.method.second_phase(self, labelled, unlabelled, outputs)
        clashes = sorted(set(terms) & set(self.state.output))
        if clashes:
            raise ValueError(
                f"{type(self.method).__name__}.second_phase returned the terms {clashes}, which the main phase's "
                "output already has: give the second phase's terms their own names."
            )
        self.state.output.update(terms)
        if not self._is_finite(loss, terms, batchdata, f"second-phase loss (optimiser {name!r})"):
            return
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        self.fire_event(SSLIterationEvents.SECOND_PHASE_COMPLETED)

    def _grad_scalers(self) -> dict[str, torch.amp.GradScaler]:
        """The fp16 grad scalers by the optimiser they serve (empty without fp16 AMP)."""
        scalers = {MAIN_OPTIMIZER: self.scaler} if self.scaler is not None else {}
        return {**scalers, **self.scalers}

    def state_dict(self) -> OrderedDict:
        """Ignite's engine state plus ``grad_scalers`` (by optimiser name) and the ``unlabelled`` cycle's position.

        Returns:
            The state, loadable with ``torch.load(..., weights_only=True)``.
        """
        state = super().state_dict()
        state["grad_scalers"] = {name: scaler.state_dict() for name, scaler in self._grad_scalers().items()}
        if self.unlabelled is not None:
            state["unlabelled"] = self.unlabelled.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore Ignite's engine state, the grad scalers and the unlabelled cycle.

        A checkpoint without ``grad_scalers`` / ``unlabelled`` (older, or saved without fp16 AMP) leaves those
        fresh; scaler states for optimisers this trainer has no scaler for (AMP now off, say) are ignored with a
        warning in the log.

        Args:
            state_dict: as returned by :meth:`state_dict`.
        """
        state_dict = dict(state_dict)
        scaler_states = state_dict.pop("grad_scalers", None) or {}
        unlabelled = state_dict.pop("unlabelled", None)
        super().load_state_dict(state_dict)
        scalers = self._grad_scalers()
        for name, scaler_state in scaler_states.items():
            if name in scalers and scaler_state:
                scalers[name].load_state_dict(scaler_state)
            else:
                self.logger.warning(
                    f"checkpoint has a grad scaler state for {name!r}, which this trainer does not use: ignored."
                )
        if unlabelled is not None and self.unlabelled is not None:
            self.unlabelled.load_state_dict(unlabelled)
