"""The one training loop of semiseg: a MONAI SupervisedTrainer that feeds a labelled and an unlabelled batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents, default_prepare_batch
from monai.utils import CommonKeys as Keys
from torch.utils.data import DataLoader, DistributedSampler

from semiseg.engines.outputs import image_filenames
from semiseg.keys import SSLIterationEvents
from semiseg.methods.base import SSLMethod

__all__ = ["SemiSupervisedTrainer", "UnlabelledCycle"]


class UnlabelledCycle:
    """Endless iterator over an unlabelled loader, independent of the labelled loader's epochs.

    Each pass over the loader is one unlabelled "epoch"; a ``DistributedSampler`` gets ``set_epoch`` so every pass
    is shuffled differently on every rank.

    Args:
        loader: the unlabelled DataLoader (or any re-iterable).

    Raises:
        ValueError: if the loader yields nothing.
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.epoch = 0
        self._iter: Iterator | None = None

    def _restart(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        self._iter = iter(self.loader)

    def __next__(self) -> Any:
        if self._iter is None:
            self._restart()
        try:
            return next(self._iter)  # type: ignore[arg-type]
        except StopIteration:
            self.epoch += 1
            self._restart()
            try:
                return next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                raise ValueError("the unlabelled data loader yields no batch: its data set is empty.") from None


class SemiSupervisedTrainer(SupervisedTrainer):
    """MONAI ``SupervisedTrainer`` whose iteration is ``loss, outputs = method(engine, labelled, unlabelled)``.

    One iteration takes one labelled batch from ``train_data_loader`` (Ignite's data, which defines epochs) and one
    batch from ``unlabelled_data_loader``, which cycles independently (its batch size sets the labelled/unlabelled
    ratio). The method object (:class:`semiseg.methods.SSLMethod`) computes the forward passes and the loss; this
    class owns zero-grad, AMP, backward, the optimiser step, the non-finite-loss check and MONAI's iteration events
    (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``), so MONAI handlers
    (StatsHandler, LrScheduleHandler, CheckpointSaver, ValidationHandler, ...) work unchanged. Cross-cutting state
    (teacher, consistency weight) comes from handlers through ``engine.state`` (DESIGN.md §2).

    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits on the labelled batch), ``loss``
    and the method's loss terms (``SSLKeys``). ``decollate`` defaults to False: training needs no per-item
    post-processing, and skipping it saves a copy per iteration.

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
            checkpoint (``save_final``) is the last good state. ``"skip"``: log and skip the update.
        decollate: see the class docstring.
        kwargs: other ``SupervisedTrainer`` arguments (``train_handlers``, ``amp``, ``key_train_metric``, ...).

    Raises:
        TypeError: if ``method`` is not an ``SSLMethod``.
        ValueError: if the method needs unlabelled data and none is given, or on an unknown ``nan_policy``.
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
        **kwargs: Any,
    ) -> None:
        if not isinstance(method, SSLMethod):
            raise TypeError(f"method must be a semiseg.methods.SSLMethod, got {type(method).__name__}.")
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}.")
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
        self.unlabelled_data_loader = unlabelled_data_loader
        self.unlabelled = UnlabelledCycle(unlabelled_data_loader) if unlabelled_data_loader is not None else None
        method.attach(self)

    def _next_unlabelled(self) -> torch.Tensor | None:
        if self.unlabelled is None or not self.method.requires_unlabelled:
            return None
        batch = next(self.unlabelled)
        images, _ = default_prepare_batch(batch, self.state.device, self.non_blocking, **self.to_kwargs)
        return images

    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        """One semi-supervised step: method forward + loss, finite check, backward, optimiser step."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images, labels = default_prepare_batch(batchdata, self.state.device, self.non_blocking, **self.to_kwargs)
        unlabelled = self._next_unlabelled()

        self.network.train()
        self.optimizer.zero_grad(set_to_none=self.optim_set_to_none)
        if self.amp and self.scaler is not None:
            with torch.autocast("cuda", **self.amp_kwargs):
                loss, outputs = self.method(self, (images, labels), unlabelled)
        else:
            loss, outputs = self.method(self, (images, labels), unlabelled)
        self.state.output = {Keys.IMAGE: images, Keys.LABEL: labels, **outputs, Keys.LOSS: loss}
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        self.fire_event(IterationEvents.LOSS_COMPLETED)

        if not torch.isfinite(loss.detach()).all():
            terms = {k: float(v) for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.numel() == 1}
            message = (
                f"non-finite loss {float(loss.detach()):.4g} at iteration {self.state.iteration} "
                f"(epoch {self.state.epoch}); "
                f"terms {terms}; labelled batch {image_filenames(batchdata) or '(no file names)'}. The update was not "
                "applied. Common causes: a learning rate too high for this data, an image with NaN/inf voxels, or a "
                "constant image that intensity normalisation divides by zero."
            )
            if self.nan_policy == "raise":
                raise FloatingPointError(message)
            self.logger.warning(message + " Skipping this iteration (nan_policy='skip').")
            self.fire_event(IterationEvents.MODEL_COMPLETED)
            return self.state.output

        if self.amp and self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.optimizer.step()
        self.fire_event(IterationEvents.MODEL_COMPLETED)
        return self.state.output

