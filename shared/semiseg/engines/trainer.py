"""The one training loop of semiseg: a MONAI SupervisedTrainer that feeds a labelled and an unlabelled batch."""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.engines.workflow import Workflow
from monai.utils import CommonKeys as Keys
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from semiseg.engines.outputs import image_filenames, loss_terms
from semiseg.handlers.checkpoint import abs_total
from semiseg.handlers.random_state import (
    get_random_state,
    get_transform_state,
    random_transforms,
    set_random_state,
    set_transform_state,
)
from semiseg.keys import SSLIterationEvents, SSLRunEvents
from semiseg.methods.base import LabelledBatch, SSLMethod
from semiseg.modes import ensure_mode

__all__ = ["SemiSupervisedTrainer", "DataCycle", "UnlabelledCycle", "epoch_length_for"]

MAIN_NETWORK = "network"
MAIN_OPTIMIZER = "optimizer"


def epoch_length_for(max_iterations: int, iterations_per_epoch: int) -> int:
    """The Ignite ``epoch_length`` that makes ``max_epochs x epoch_length`` equal ``max_iterations`` exactly.

    The largest divisor of ``max_iterations`` that is not above ``iterations_per_epoch``, so the run is
    ``max_iterations // epoch_length`` whole epochs (docs/architecture.md §2, "Budgets and the hot loop"): 150
    iterations at 100 per epoch are 2 epochs of 75, never 1 epoch of 100. Ignite's ``max_iters`` would allow a last
    partial epoch instead, but MONAI's trainers and MONAI Label count the budget in epochs
    (``train#trainer#max_epochs``), so the budget stays ``max_epochs x epoch_length``. A ``max_iterations`` whose
    largest such divisor is below half of ``iterations_per_epoch`` (a prime, say) gives short epochs, so
    epoch-level handlers (validation every ``val_interval`` epochs, interval checkpoints) run more often: that is
    warned about with two budgets that avoid it.

    Args:
        max_iterations: the training budget in iterations (bundle setting ``max_iterations``).
        iterations_per_epoch: the longest epoch wanted (bundle setting ``iterations_per_epoch``).

    Returns:
        The epoch length.

    Raises:
        ValueError: if either setting is not an integer >= 1.
    """
    for name, value in (("max_iterations", max_iterations), ("iterations_per_epoch", iterations_per_epoch)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(
                f"bundle setting {name!r} must be an integer >= 1, got {value!r}: set e.g. --{name} "
                f"{6000 if name == 'max_iterations' else 100}."
            )
    total, longest = int(max_iterations), int(iterations_per_epoch)
    if total <= longest:
        return total
    length = next(d for d in range(longest, 0, -1) if total % d == 0)
    if 2 * length < longest:
        lower, upper = total // longest * longest, -(-total // longest) * longest
        warnings.warn(
            f"max_iterations {total} has no divisor between {-(-longest // 2)} and {longest} (iterations_per_epoch), "
            f"so its epochs are {length} iteration(s) long and epoch-level handlers (validation every val_interval "
            f"epochs, interval checkpoints) run every {length} iteration(s); choose a budget such as {lower} or "
            f"{upper}, or an iterations_per_epoch that divides {total}.",
            stacklevel=2,
        )
    return length


def _plain(value: Any) -> Any:
    """A MetaTensor as a plain tensor (no metadata work in the forward passes); anything else unchanged."""
    return value.as_tensor() if isinstance(value, MetaTensor) else value


def _plain_batch(batch: Any) -> Any:
    """A collated batch with its ``image`` / ``label`` as plain tensors (other entries and meta left in ``batch``)."""
    if isinstance(batch, Mapping) and any(isinstance(batch.get(k), MetaTensor) for k in (Keys.IMAGE, Keys.LABEL)):
        return {**batch, **{k: _plain(batch[k]) for k in (Keys.IMAGE, Keys.LABEL) if k in batch}}
    return batch


def _generators(loader: Any) -> list[torch.Generator]:
    """The torch generators of a loader and its sampler(s), distinct, in a fixed order."""
    found: list[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


class DataCycle:
    """Endless iterator over a data loader, in passes, whose position is checkpointed and replayed exactly.

    The trainer draws both its labelled batches (Ignite's data, so epochs are a count of iterations, not of passes)
    and its unlabelled batches from one of these. Each pass over the loader is one "epoch" of the cycle; a
    ``DistributedSampler`` gets ``set_epoch`` so every pass is shuffled differently on every rank. When a pass
    opens, the cycle records the state of the generators its shuffling draws from (torch's global one, which a
    ``RandomSampler`` without a generator and the DataLoader's worker seeds use, and the loader's and sampler's own
    generators) and of the loader's random transforms (crops, flips); ``epoch``, ``position`` (batches drawn from
    the current pass), that record and the current states of the loader's own generators are its
    :meth:`state_dict`. After :meth:`load_state_dict` the next draw re-opens pass ``epoch`` under the recorded
    generator states (the global one put back afterwards) and skips the ``position`` batches already drawn, loading
    them again (at most one pass of extra loading on resume), so the transforms' generators end where the
    interrupted run had them and a resumed run draws the same batches as an uninterrupted one. Replaying from the
    pass's start, not from the transforms' state saved with the checkpoint, also holds for a ``ThreadDataLoader``
    (``data_device``), whose background thread has prepared the next batch, and so advanced the transforms, before
    a checkpoint is written. A pass that was drawn to its end is not
    replayed: the next one opens under the loader's own generators as saved (a ``ThreadDataLoader`` has its own, see
    :func:`semiseg.data.device.data_loader`; torch's global one comes back with the trainer's random state).

    Args:
        loader: the DataLoader (or any re-iterable).

    Raises:
        ValueError: if the loader yields nothing.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self.position = 0
        self._iter: Iterator | None = None
        self._pass_rng: dict[str, Any] | None = None
        self._loader_generators: list[torch.Tensor] | None = None  # saved states, put back when the next pass opens

    def _capture_rng(self) -> dict[str, Any]:
        return {
            "torch": torch.get_rng_state(),
            "generators": [g.get_state() for g in _generators(self.loader)],
            "transforms": get_transform_state(random_transforms(self.loader)),
        }

    def _open(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        self._pass_rng = self._capture_rng()
        self._iter = iter(self.loader)

    def _next_pass(self) -> None:
        self.epoch += 1
        self.position = 0
        self._open()

    def _replay(self) -> None:
        """Re-open pass ``epoch`` under its recorded generator states and skip ``position`` batches.

        With the transforms' states of the pass's start recorded, the skipped batches leave the transforms where the
        interrupted run had them; without (an older checkpoint), their current states are put back afterwards.
        """
        recorded, current = self._pass_rng, torch.get_rng_state()
        transforms = random_transforms(self.loader)
        transform_state: dict[str, Any] | None = get_transform_state(transforms)
        try:
            if recorded is not None:
                torch.set_rng_state(recorded["torch"])
                for gen, state in zip(_generators(self.loader), recorded.get("generators", [])):
                    gen.set_state(state)
                at_start = recorded.get("transforms")
                if at_start is not None and set_transform_state(transforms, at_start):
                    transform_state = None  # the replay itself brings them to the interrupted run's states
            sampler = getattr(self.loader, "sampler", None)
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(self.epoch)
            self._iter = iter(self.loader)
            for _ in range(self.position):
                try:
                    next(self._iter)
                except StopIteration:
                    self._next_pass()
                    return
        finally:
            torch.set_rng_state(current)
            if transform_state is not None:
                set_transform_state(transforms, transform_state)

    def _resume(self) -> None:
        """First draw, or first after ``load_state_dict``: open pass ``epoch`` at ``position``."""
        try:
            length: int | None = len(self.loader)  # type: ignore[arg-type]
        except TypeError:
            length = None
        if self.position and length is not None and self.position >= length:
            for gen, state in zip(_generators(self.loader), self._loader_generators or []):
                gen.set_state(state)
            self._next_pass()
        elif self.position or self._pass_rng is not None:
            self._replay()
        else:
            self._open()

    def __iter__(self) -> DataCycle:
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
                raise ValueError("the data loader yields no batch: its data set is empty.") from None
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch": passes started before the current one, "position": batches drawn from the current one,
        "rng": the generator states (torch's, the loader's, its transforms') when the current pass opened,
        "loader_generators": the states of the loader's own generators now}`` (``rng`` once a pass was opened,
        ``loader_generators`` when the loader or its sampler has a generator of its own)."""
        state: dict[str, Any] = {"epoch": self.epoch, "position": self.position}
        generators = _generators(self.loader)
        if generators:
            state["loader_generators"] = [g.get_state() for g in generators]
        if self._pass_rng is not None:
            state["rng"] = self._pass_rng
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from a :meth:`state_dict`; the next draw opens the saved pass at the saved position.

        A state without ``rng`` (an older checkpoint) replays the pass under the generators' current states.

        Raises:
            ValueError: if ``epoch`` or ``position`` is missing or not an integer >= 0.
        """
        for key in ("epoch", "position"):
            value = state_dict.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"data cycle state {key!r} must be an integer >= 0, got {value!r}.")
        self.epoch, self.position = int(state_dict["epoch"]), int(state_dict["position"])
        rng = state_dict.get("rng")
        self._pass_rng = None
        if rng is not None:
            self._pass_rng = {"torch": rng["torch"].cpu(), "generators": [g.cpu() for g in rng.get("generators", [])]}
            if rng.get("transforms") is not None:
                self._pass_rng["transforms"] = rng["transforms"]
        self._loader_generators = [g.cpu() for g in state_dict.get("loader_generators", [])]
        self._iter = None


UnlabelledCycle = DataCycle
"""The unlabelled loader's cycle (the same class as the labelled one's; the name predates it)."""


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

    One iteration takes one labelled batch from ``train_data_loader`` and one batch from
    ``unlabelled_data_loader`` (its batch size sets the labelled/unlabelled ratio). Both loaders are drawn through
    a :class:`DataCycle`, so an epoch is ``epoch_length`` iterations whatever the loaders' lengths, and both
    positions are checkpointed. The method object (:class:`semiseg.methods.SSLMethod`) computes the forward passes
    and the loss; this class owns zero-grad, AMP, backward, the finite check, the optimiser steps and MONAI's
    iteration events, so MONAI handlers (StatsHandler, LrScheduleHandler, CheckpointSaver, ValidationHandler, ...)
    work unchanged. Cross-cutting state (teacher, consistency weight) comes from handlers through ``engine.state``
    (docs/architecture.md §2).

    One iteration:

    1. every trainable part (``engine.networks``) is put in train mode (validation puts the main one in eval);
    2. main phase: the main optimiser and every extra optimiser except the second phase's are zeroed,
       ``loss, outputs = method(...)`` runs under autocast, ``FORWARD_COMPLETED`` and ``LOSS_COMPLETED`` fire,
       the loss is back-propagated once (``BACKWARD_COMPLETED``), the loss and the gradients of every parameter
       those optimisers hold are checked to be finite in one device sync, and all those optimisers step
       (CPS-style separate optimisers on one summed loss);
    3. second phase, only when ``method.second_phase_optimizer`` is set (a discriminator, on the pattern of
       MONAI's ``AdversarialTrainer``): that optimiser is zeroed (so gradients its part got from the main loss are
       dropped), ``loss2, terms2 = method.second_phase(engine, labelled, unlabelled, outputs)`` runs under the same
       autocast, ``terms2`` are merged into ``engine.state.output``, the loss is back-propagated, it and that
       optimiser's gradients are checked, and that optimiser alone steps; ``SECOND_PHASE_COMPLETED`` fires;
    4. ``MODEL_COMPLETED`` fires once every update of the iteration is applied.

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits on the labelled batch), ``loss``
    and the method's terms (``SSLKeys`` and any other scalar, all logged by :func:`semiseg.engines.loss_terms`).
    ``decollate`` defaults to False: training needs no per-item post-processing, and skipping it saves a copy per
    iteration. Batches may carry MetaTensors (the training transforms keep them so that a failure can name the
    files): the images and labels are handed to the method as plain tensors.

    The finite check is the one place an iteration waits on the device. Gradients are checked with one fused
    ``torch._foreach_norm`` (L1 norm, :func:`semiseg.handlers.checkpoint.abs_total`) summed with the loss, so a loss
    that is still finite while its gradients are not (an overflow in the backward pass) stops before the step, and a
    non-finite value never reaches the weights.
    Under fp16 AMP only the loss is checked: the grad scaler skips steps with non-finite gradients by itself.

    AMP (``amp=True``) autocasts on the trainer's device type (``cuda``, ``cpu``, ...) with ``amp_kwargs``
    (``{"dtype": torch.bfloat16}`` for bf16; the default dtype is the device's autocast default, fp16 on CUDA).
    Under fp16 each update phase has its own ``torch.amp.GradScaler``: ``self.scaler`` (MONAI's attribute) for the
    main phase, ``self.scalers[name]`` for the second phase's optimiser; bf16 needs none. The scalers are made
    once, here (MONAI's ``Trainer.run`` would replace ``self.scaler`` on every call).

    :meth:`state_dict` adds to Ignite's engine state the scalers, both data cycles and the random generators
    (:func:`semiseg.handlers.random_state.get_random_state`, with the data sets' random transforms), so
    ``"trainer": "@train#trainer"`` in ``checkpoint#objects`` restores all of them with MONAI's
    ``CheckpointLoader`` and a resumed run continues as the uninterrupted one would (bit for bit on CPU with
    ``num_workers=0``). The trainer also knows which iteration its in-memory state belongs to
    (:attr:`last_good_iteration`), which :class:`semiseg.handlers.AtomicCheckpointSaver` uses to write a
    checkpoint when training stops on an error (docs/architecture.md §2, "Checkpoints").

    Args:
        device: the device to train on.
        max_epochs: epochs to run; the budget is ``max_epochs * epoch_length`` iterations (:attr:`budget`).
        train_data_loader: labelled DataLoader yielding ``{"image", "label"}`` batches.
        network: the student network.
        optimizer: the student's optimiser.
        method: the semi-supervised method object.
        unlabelled_data_loader: unlabelled DataLoader yielding ``{"image"}`` batches; required when
            ``method.requires_unlabelled``.
        epoch_length: iterations per epoch (Ignite); default ``len(train_data_loader)``
            (:func:`epoch_length_for` picks one that divides a budget).
        nan_policy: ``"raise"`` (default): a non-finite loss or gradient stops training before the optimiser step,
            with an error naming the iteration, the loss terms, the first non-finite gradients and the files of the
            labelled and unlabelled batches, so the weights stay those of the last completed iteration.
            ``"skip"``: log and skip the update (a non-finite main phase skips the whole iteration, a non-finite
            second phase that phase's update).
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
            ``accumulation_steps`` other than 1, without ``epoch_length`` for a loader without a length, on a
            reserved or repeated part/optimiser, on a parameter held by two optimisers, or if ``networks`` /
            ``optimizers`` lack a part the method declares (``method.required_networks``,
            ``method.second_phase_optimizer``).
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
        if epoch_length is None:
            try:
                epoch_length = len(train_data_loader)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError(
                    "train_data_loader has no length: give the trainer an epoch_length (bundle id 'epoch_length')."
                ) from None
        extra_networks = _check_parts(
            "networks", networks or {}, MAIN_NETWORK, network, nn.Module, "train#trainer#networks"
        )
        extra_optimizers = _check_parts(
            "optimizers", optimizers or {}, MAIN_OPTIMIZER, optimizer, torch.optim.Optimizer, "train#trainer#optimizers"
        )
        self._check_method_parts(method, extra_networks, extra_optimizers)
        self._check_parameters(network, optimizer, extra_networks, extra_optimizers)

        labelled = DataCycle(train_data_loader)
        event_names = list(kwargs.pop("event_names", None) or []) + [SSLIterationEvents, SSLRunEvents]
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=labelled,
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
        self.train_data_loader = train_data_loader
        self.labelled = labelled
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
        self.unlabelled = DataCycle(unlabelled_data_loader) if unlabelled_data_loader is not None else None
        self._unlabelled_batch: Any = None
        # which iteration the in-memory state belongs to (None while an update is applied), see last_good_iteration
        self._good_iteration: int | None = None
        self._good_cycles: dict[str, dict[str, Any]] = {}
        self._start_iteration: int | None = None
        self._reporting_good_state = False
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

    @property
    def budget(self) -> int:
        """The iterations this run trains in all: ``max_epochs x epoch_length`` as the engine has them now.

        Schedules that span the run (:class:`semiseg.handlers.BudgetLrScheduleHandler`, ramps with ``run_steps``
        or fractions) read it when they act, so a ``--max_iterations``, a ``train#trainer#max_epochs`` override
        (MONAI Label) or a resume with a larger budget all get schedules that fit.
        """
        return int(self.state.max_epochs or 0) * int(self.state.epoch_length or 0)

    @property
    def last_good_iteration(self) -> int | None:
        """The iteration whose completed update the in-memory training state holds, or None.

        Set when ``STARTED`` (a resumed run's checkpoint is loaded then) and each ``ITERATION_COMPLETED`` have
        run all their handlers; None from the first optimiser step of an iteration until its
        ``ITERATION_COMPLETED`` handlers (teacher update, LR step, ...) have all run, and before the run starts. A
        failure before the step (a non-finite loss or gradient, an error or Ctrl-C in the forward or backward pass,
        in data loading or in validation) leaves a consistent state of this iteration; one during the update does
        not.
        """
        return self._good_iteration

    @property
    def start_iteration(self) -> int | None:
        """The iteration this run started from (0, or a resumed checkpoint's), once ``STARTED`` has run."""
        return self._start_iteration

    @contextlib.contextmanager
    def last_good_state(self) -> Iterator[int]:
        """While open, :meth:`state_dict` describes the last completed iteration (for a save after an error).

        The engine's ``iteration`` / ``epoch`` and the data cycles' positions are those of
        :attr:`last_good_iteration`; the random generators are as they are now (a resume from such a checkpoint
        continues from the right weights, optimiser state, schedules and batches, with other random draws).

        Yields:
            The iteration described.

        Raises:
            RuntimeError: if there is no consistent state (:attr:`last_good_iteration` is None).
        """
        good = self._good_iteration
        if good is None:
            raise RuntimeError("the training state is being updated: there is no consistent state to describe.")
        iteration, epoch = self.state.iteration, self.state.epoch
        self.state.iteration = good
        self.state.epoch = good // self.state.epoch_length if self.state.epoch_length else epoch
        self._reporting_good_state = True
        try:
            yield good
        finally:
            self.state.iteration, self.state.epoch = iteration, epoch
            self._reporting_good_state = False

    def _cycles(self) -> dict[str, DataCycle]:
        return {"labelled": self.labelled, **({"unlabelled": self.unlabelled} if self.unlabelled is not None else {})}

    def _mark_good(self) -> None:
        self._good_iteration = self.state.iteration
        self._good_cycles = {name: cycle.state_dict() for name, cycle in self._cycles().items()}

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        """Ignite's ``_fire_event``; after ``STARTED`` and ``ITERATION_COMPLETED`` the state is a consistent one."""
        super()._fire_event(event_name, *event_args, **event_kwargs)
        if event_name is Events.ITERATION_COMPLETED:
            self._mark_good()
        elif event_name is Events.STARTED:
            self._mark_good()
            self._start_iteration = self.state.iteration

    def run(self) -> None:  # type: ignore[override]
        """Run training (Ignite ``Engine.run`` through MONAI's ``Workflow.run``), resuming from the current state.

        Skips MONAI's ``Trainer.run``, which only replaces ``self.scaler`` by a new CUDA grad scaler on every call:
        that would discard a scale restored from a checkpoint and ignore the trainer's device. Fires
        :attr:`~semiseg.keys.SSLRunEvents.RUN_ENDED` when the run ends, completed or failed.
        """
        self._good_iteration = self._start_iteration = None
        try:
            Workflow.run(self)
        finally:
            self._fire_event(SSLRunEvents.RUN_ENDED)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.amp_device_type, **self.amp_kwargs)

    def _next_unlabelled(self) -> torch.Tensor | None:
        if self.unlabelled is None or not self.method.requires_unlabelled:
            return None
        batch = self._unlabelled_batch = next(self.unlabelled)
        images, _ = default_prepare_batch(_plain_batch(batch), self.state.device, self.non_blocking, **self.to_kwargs)
        return images

    def _parameter_names(self) -> dict[int, str]:
        return {id(p): f"{net}.{name}" for net, mod in self.networks.items() for name, p in mod.named_parameters()}

    def _check_finite(
        self,
        loss: torch.Tensor,
        terms: Mapping[str, Any],
        optimizers: Sequence[torch.optim.Optimizer] | None,
        batchdata: Any,
        what: str,
    ) -> bool:
        """True if ``loss`` and the gradients of ``optimizers``' parameters are finite (one device sync).

        Otherwise raise ``FloatingPointError`` (``nan_policy="raise"``) or log and return False (``"skip"``).
        ``optimizers`` None checks the loss only (fp16 AMP, whose grad scaler skips non-finite steps itself).
        """
        params = [p for opt in optimizers or () for group in opt.param_groups for p in group["params"]]
        grads = (p.grad for p in params if p.grad is not None)
        total = loss.detach().float().sum() + abs_total(grads, loss.device)
        if bool(torch.isfinite(total)):
            return True
        # the failure path (syncs do not matter here): say what is not finite and name the batches' files
        names = self._parameter_names()
        bad = [names.get(id(p), f"a parameter of shape {tuple(p.shape)}") for p in params
               if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        loss_value = float(loss.detach().float().sum())
        if math.isfinite(loss_value):
            problem = f"{what} {loss_value:.4g} is finite but its gradients are not"
        else:
            problem = f"non-finite {what} {loss_value:.4g}"
        problem += f" at iteration {self.state.iteration} (epoch {self.state.epoch})"
        if bad:
            problem += f", non-finite gradients in {len(bad)} parameter tensor(s) (first {', '.join(bad[:3])})"
        files = f"labelled batch {image_filenames(batchdata) or '(no file names)'}"
        if self._unlabelled_batch is not None:
            files += f"; unlabelled batch {image_filenames(self._unlabelled_batch) or '(no file names)'}"
        message = (
            f"{problem}; terms {loss_terms(dict(terms))}; {files}. The update was not applied. Common causes: a "
            "learning rate too high for this data, an image with NaN/inf voxels, or a constant image that intensity "
            "normalisation divides by zero."
        )
        if self.nan_policy == "raise":
            raise FloatingPointError(message)
        self.logger.warning(message + " Skipping this update (nan_policy='skip').")
        return False

    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One semi-supervised step: main phase (method loss, all joint optimisers), then the second phase if any."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        self._unlabelled_batch = None
        images, labels = default_prepare_batch(
            _plain_batch(batchdata), self.state.device, self.non_blocking, **self.to_kwargs
        )
        unlabelled = self._next_unlabelled()

        for network in self.networks.values():
            ensure_mode(network, True)
        main_optimizers = [self.optimizer, *self._joint_optimizers]
        for optimizer in main_optimizers:
            optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        with self._autocast():
            loss, outputs = self.method(self, (images, labels), unlabelled)
        self.state.output = {Keys.IMAGE: images, Keys.LABEL: labels, **outputs, Keys.LOSS: loss}
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        self.fire_event(IterationEvents.LOSS_COMPLETED)

        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        checked = None if self.scaler is not None else main_optimizers
        if not self._check_finite(loss, outputs, checked, batchdata, "loss"):
            self.fire_event(IterationEvents.MODEL_COMPLETED)
            return self.state.output

        self._good_iteration = None  # the update starts: no consistent state until ITERATION_COMPLETED has run
        if self.scaler is not None:
            for optimizer in main_optimizers:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            for optimizer in main_optimizers:
                optimizer.step()

        if self.method.second_phase_optimizer is not None:
            self._second_phase(batchdata, (images, labels), unlabelled, outputs)
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output

    def _second_phase(
        self, batchdata: Any, labelled: LabelledBatch, unlabelled: torch.Tensor | None, outputs: dict[str, Any]
    ) -> None:
        """Zero, forward, backward, check and step the second phase's optimiser alone."""
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
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        checked = None if scaler is not None else [optimizer]
        if not self._check_finite(loss, terms, checked, batchdata, f"second-phase loss (optimiser {name!r})"):
            return
        self._good_iteration = None
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        self.fire_event(SSLIterationEvents.SECOND_PHASE_COMPLETED)

    def _grad_scalers(self) -> dict[str, torch.amp.GradScaler]:
        """The fp16 grad scalers by the optimiser they serve (empty without fp16 AMP)."""
        scalers = {MAIN_OPTIMIZER: self.scaler} if self.scaler is not None else {}
        return {**scalers, **self.scalers}

    def _data_loaders(self) -> list[Any]:
        return [cycle.loader for cycle in self._cycles().values()]

    def state_dict(self) -> OrderedDict:
        """Ignite's engine state plus ``grad_scalers`` (by optimiser name), the ``labelled`` and ``unlabelled``
        cycles (:class:`DataCycle`) and the ``random`` generators (with the data loaders' random transforms).

        Inside :meth:`last_good_state` the iteration and the cycles are those of the last completed iteration.

        Returns:
            The state, loadable with ``torch.load(..., weights_only=True)``.
        """
        state = super().state_dict()
        state["grad_scalers"] = {name: scaler.state_dict() for name, scaler in self._grad_scalers().items()}
        cycles = {name: cycle.state_dict() for name, cycle in self._cycles().items()}
        if self._reporting_good_state:
            cycles.update(self._good_cycles)
        state.update(cycles)
        state["random"] = get_random_state(*self._data_loaders())
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        """Restore Ignite's engine state, the grad scalers, the data cycles and the random generators.

        The trainer keeps its own ``epoch_length`` (so a resume with another budget runs that budget; the epoch is
        recomputed from the iteration) and, as MONAI's ``CheckpointLoader`` does, the caller keeps ``max_epochs``.
        A checkpoint without ``grad_scalers`` / ``labelled`` / ``unlabelled`` / ``random`` (older, or saved
        without fp16 AMP) leaves those as they are; scaler states for optimisers this trainer has no scaler for
        (AMP now off, say) are ignored with a warning in the log.

        Args:
            state_dict: as returned by :meth:`state_dict`.
        """
        state_dict = dict(state_dict)
        scaler_states = state_dict.pop("grad_scalers", None) or {}
        cycles = {name: state_dict.pop(name, None) for name in ("labelled", "unlabelled")}
        random_state = state_dict.pop("random", None)
        epoch_length = self.state.epoch_length
        super().load_state_dict(state_dict)
        if epoch_length and self.state.epoch_length != epoch_length:
            self.logger.info(
                f"checkpoint was trained with epochs of {self.state.epoch_length} iterations; this run uses "
                f"{epoch_length} (another max_iterations): continuing from iteration {self.state.iteration}."
            )
            self.state.epoch_length = epoch_length
            self.state.epoch = self.state.iteration // epoch_length
        scalers = self._grad_scalers()
        for name, scaler_state in scaler_states.items():
            if name in scalers and scaler_state:
                scalers[name].load_state_dict(scaler_state)
            else:
                self.logger.warning(
                    f"checkpoint has a grad scaler state for {name!r}, which this trainer does not use: ignored."
                )
        for name, cycle in self._cycles().items():
            if cycles.get(name) is not None:
                cycle.load_state_dict(cycles[name])
        if random_state is not None:
            set_random_state(random_state, *self._data_loaders(), logger=self.logger)
