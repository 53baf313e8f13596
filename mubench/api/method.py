"""The unlearning method: a short class that says only what is particular to it.

The core builds the optimiser, moves batches to the device, runs autocast, shows
progress, decays the learning rate and enforces the time budget. A method chooses
which data each epoch passes over (:meth:`Method.passes`), the loss of a batch
(:meth:`Method.loss`) and, optionally, set-up work and gradient surgery.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import ClassVar, NamedTuple

import torch
from torch.utils.data import DataLoader

from mubench.api.task import TaskType
from mubench.data import Batch, UnlearningData
from mubench.errors import UserError, unknown_name
from mubench.loop import OPTIMIZERS, Budget, LoopReport, accumulate_gradients, optimise


class Pass(NamedTuple):
    """One sweep of an epoch: the ``phase`` name handed to :meth:`Method.loss` and its loader."""

    phase: str
    loader: DataLoader


@dataclass
class Context:
    """What a method works with: the task, the model being unlearned, the data and the device."""

    task: TaskType
    model: torch.nn.Module
    data: UnlearningData
    device: torch.device
    precision: str
    build_model: Callable[[], torch.nn.Module]
    generator: torch.Generator
    budget: Budget = field(default_factory=Budget)

    def frozen_copy(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of ``model`` (default: the model as it is now) in eval mode with no gradients."""
        frozen = copy.deepcopy(model if model is not None else self.model).eval()
        frozen.requires_grad_(False)
        return frozen

    def fresh_model(self) -> torch.nn.Module:
        """A randomly initialised model of the same family, on the device."""
        return self.build_model().to(self.device)


class Method:
    """Base class of unlearning methods.

    ``defaults`` lists every hyperparameter with its default; the card's ``unlearn``
    section (or ``train`` where ``recipe = "train"``), then ``methods.<name>``, then
    ``--method-args`` override them. ``time_limited`` methods stop when unlearning
    would take longer than retraining. A method with ``trains = False`` does all its
    work in :meth:`setup` (an edit of the weights, no optimiser), timed and budgeted
    like the rest. During training, ``step`` is the optimiser step being taken.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    recipe: ClassVar[str] = "unlearn"
    time_limited: ClassVar[bool] = True
    trains: ClassVar[bool] = True
    defaults: ClassVar[dict] = dict(
        epochs=1, batch_size=32, optimizer="adam", lr=1e-4, momentum=0.9, weight_decay=0.0,
        lr_decay_epochs=[], lr_decay=0.1, grad_accum_steps=1, max_grad_norm=0.0, warmup_steps=0,
    )
    choices: ClassVar[dict] = {"optimizer": tuple(OPTIMIZERS)}

    def __init__(self, ctx: Context, args: dict):
        self.ctx = ctx
        self.hp = SimpleNamespace(**args)
        self.step = 0

    @classmethod
    def resolve_args(cls, card, overrides: dict | None = None, sources: dict | None = None) -> dict:
        """Hyperparameters: ``defaults`` < card recipe < ``methods.<name>`` < ``overrides``.

        The card's shared recipe (``unlearn``, or ``train`` for ``recipe = "train"``)
        sets the keys a method declares under the card's ``protocol: mubench`` (the
        default: MU-Bench's one optimiser and batch size for all methods); under
        ``protocol: authors`` the shared ``unlearn`` recipe is skipped and each method
        keeps its authors' defaults. A key the method does not know in
        ``methods.<name>`` or ``overrides`` is an error. ``sources``, if given, is
        filled with where each value came from: ``method``, ``card.<recipe>``,
        ``card.methods``, ``command line``.
        """
        args = dict(cls.defaults)
        origin = dict.fromkeys(args, "method")
        if cls.recipe == "train" or card.data.get("protocol", "mubench") == "mubench":
            shared = {k: v for k, v in card.data[cls.recipe].items() if k in args}
            args.update(shared)
            origin.update(dict.fromkeys(shared, f"card.{cls.recipe}"))
        for tag, source, values in (("card.methods", f"{card.path}: methods.{cls.name}", card.data.get("methods", {}).get(cls.name, {})),
                                    ("command line", "--method-args", overrides or {})):
            for key, value in values.items():
                if key not in args:
                    raise unknown_name(f"argument of method '{cls.name}' in {source}", key, args)
                args[key] = _coerce(key, value, cls.defaults[key], source)
                origin[key] = tag
        if sources is not None:
            sources.update(origin)
        problem = cls.check_args(args)
        if problem:
            raise UserError(f"method '{cls.name}': {problem}")
        return args

    @classmethod
    def check_args(cls, args: dict) -> str | None:
        """What is wrong with resolved hyperparameters, in words, or None."""
        for key, allowed in cls.choices.items():
            if key in args and args[key] not in allowed:
                return f"{key} must be one of {', '.join(allowed)}, got {args[key]!r}"
        for key in ("epochs", "batch_size", "lr", "grad_accum_steps"):
            if key in args and not args[key] > 0:
                return f"{key} must be positive, got {args[key]}"
        for key in ("max_grad_norm", "warmup_steps"):
            if key in args and not args[key] >= 0:
                return f"{key} must not be negative, got {args[key]}"
        return None

    @classmethod
    def unsupported(cls, task: TaskType) -> str | None:
        """Why this method cannot run on ``task`` (before its data is loaded), or None when it can."""
        return None

    @property
    def model(self) -> torch.nn.Module:
        return self.ctx.model

    @property
    def task(self) -> TaskType:
        return self.ctx.task

    # --- what a method says ---------------------------------------------------------------
    def setup(self) -> None:
        """Work before the first epoch (teachers, masks); it counts as unlearning time."""

    def passes(self, epoch: int) -> list[Pass]:
        """The sweeps of epoch ``epoch`` in order."""
        raise NotImplementedError

    def loss(self, batch: Batch, phase: str) -> torch.Tensor:
        """The scalar loss of ``batch`` in ``phase``; the core back-propagates it."""
        raise NotImplementedError

    def after_backward(self) -> None:
        """Gradient surgery between ``backward()`` and the optimiser step."""

    def optimizer_settings(self) -> dict:
        """Optimiser, learning-rate schedule, accumulation and clipping, read from the hyperparameters."""
        hp = self.hp
        return dict(optimizer=hp.optimizer, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                    lr_decay_epochs=list(hp.lr_decay_epochs), lr_decay=hp.lr_decay, grad_accum_steps=hp.grad_accum_steps,
                    max_grad_norm=hp.max_grad_norm, warmup_steps=hp.warmup_steps)

    def unlearn(self) -> LoopReport:
        """Set up, then (for a method that ``trains``) optimise for ``epochs`` epochs; the whole call is timed."""
        start = time.perf_counter()
        self.ctx.budget.start()
        self.setup()
        if self.trains:
            report = optimise(self, self.model, self.hp.epochs, self.ctx.device, self.ctx.precision,
                              self.ctx.budget, desc=self.name)
        else:
            report = LoopReport(budget_exhausted=self.ctx.budget.spent(0))
        report.seconds = time.perf_counter() - start
        return report

    # --- helpers --------------------------------------------------------------------------
    def loader(self, part: str, batch_size: int | None = None, **options) -> DataLoader:
        """A shuffled loader over ``part`` (``forget``, ``retain``, ``train``) at the method's batch size."""
        return self.ctx.data.loader(part, batch_size or self.hp.batch_size, **options)

    def paired(self, batch_size: int | None = None, retain_batch_size: int | None = None, lead: str = "forget") -> PairedLoader:
        """Batches of D_f and D_r taken in one step, for losses that need both: each batch of the ``lead`` part (which sets
        the pass's length) with the next batch of the other, which restarts (reshuffled) when it runs out."""
        for part in ("forget", "retain"):
            if len(getattr(self.ctx.data, part)) == 0:
                raise UserError(f"method '{self.name}' pairs D_f with D_r batches, but D_{part[0]} is empty")
        forget = self.loader("forget", batch_size)
        return PairedLoader(forget, self.loader("retain", retain_batch_size or batch_size), lead)

    def accumulated_gradients(self, part: str, loss: Callable[[Batch], torch.Tensor], batch_size: int | None = None):
        """The gradient of ``loss`` summed over ``part`` (unshuffled), per trainable parameter of the model."""
        return accumulate_gradients(self.model, self.loader(part, batch_size, shuffle=False), loss, self.ctx.device, self.ctx.precision)

    def logits(self, batch: Batch, model: torch.nn.Module | None = None) -> torch.Tensor:
        return self.task.forward(model if model is not None else self.model, batch.inputs)

    def teacher_logits(self, teacher: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of a frozen model, without building a graph."""
        with torch.no_grad():
            return self.logits(batch, teacher)

    def distill(self, logits: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """The task's distillation loss, KL(teacher ‖ student) (per token for language models)."""
        return self.task.distill(logits, teacher, batch.inputs, temperature)

    def task_loss(self, batch: Batch, logits: torch.Tensor | None = None, inputs: dict | None = None) -> torch.Tensor:
        """The mean task loss of ``batch`` (against ``inputs`` if given, e.g. relabelled ones)."""
        inputs = inputs if inputs is not None else batch.inputs
        logits = logits if logits is not None else self.task.forward(self.model, inputs)
        return self.task.loss(logits, inputs).mean()


@dataclass
class Pair:
    """A D_f batch and a D_r batch taken in one step."""

    forget: Batch
    retain: Batch

    def to(self, device: torch.device) -> Pair:
        return Pair(self.forget.to(device), self.retain.to(device))

    def __len__(self) -> int:
        return len(self.forget) + len(self.retain)


class PairedLoader:
    """Each batch of the ``lead`` part (``forget`` or ``retain``) with the next batch of the other, which restarts
    (reshuffled) when it runs out."""

    def __init__(self, forget: DataLoader, retain: DataLoader, lead: str = "forget"):
        if lead not in ("forget", "retain"):
            raise ValueError(f"lead must be 'forget' or 'retain', got {lead!r}")
        self.forget, self.retain, self.lead = forget, retain, lead

    def __len__(self) -> int:
        return len(getattr(self, self.lead))

    def __iter__(self):
        leading, following = (self.forget, self.retain) if self.lead == "forget" else (self.retain, self.forget)
        others = iter(following)
        for batch in leading:
            try:
                other = next(others)
            except StopIteration:
                others = iter(following)
                other = next(others)
            yield Pair(batch, other) if self.lead == "forget" else Pair(other, batch)


def _coerce(key: str, value, default, source: str):
    """``value`` as the type of ``default`` (an int is a valid float); else a one-line error."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: {key}: expected {expected.__name__}, got {value!r}")


class Fit(Method):
    """Ordinary training with the task loss on one part of the data: the card's ``train`` recipe."""

    name = "fit"
    recipe = "train"
    time_limited = False
    part: ClassVar[str] = "train"

    def passes(self, epoch):
        return [Pass(self.part, self.loader(self.part))]

    def loss(self, batch, phase):
        return self.task_loss(batch)
