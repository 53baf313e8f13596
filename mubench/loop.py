"""The one training loop.

Device placement, precision (bf16 autocast on GPU), progress bars, gradient
accumulation and clipping, learning-rate warm-up and decay and the time budget live
here, once; methods only say what is particular to them (see
:class:`mubench.api.Method`). Evaluation lives in :mod:`mubench.evaluation`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from mubench.errors import UserError

log = logging.getLogger("mubench")

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU (also when ``accelerate launch --cpu`` started this process).

    A run is one process: started as one of several (``accelerate launch
    --num_processes N``, torchrun), it stops here with one line.
    """
    processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if processes > 1:
        raise UserError(f"this process is one of {processes} (WORLD_SIZE): a mubench run unlearns in one process; launch it "
                        "with `accelerate launch --num_processes 1 -m mubench run ...`, or spread runs over GPUs with `mubench sweep`")
    if name == "auto":
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
            return torch.device("cpu")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}': expected auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is what ``accelerate launch --mixed_precision`` chose (``bf16`` or ``no``), else bf16 autocast on CUDA and
    fp32 elsewhere."""
    if name == "auto":
        chosen = os.environ.get("ACCELERATE_MIXED_PRECISION")
        if chosen in ("bf16", "no"):
            return "bf16" if chosen == "bf16" else "fp32"
        if chosen:
            raise UserError(f"accelerate's mixed precision '{chosen}' is not one of mubench's (bf16, or 'no' for fp32)")
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("bf16", "fp32"):
        raise UserError(f"unknown precision '{name}': expected auto, bf16 or fp32")
    return name


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(params, optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """An optimiser by name (``sgd``, ``adam``, ``adamw``)."""
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer '{optimizer}': expected one of {', '.join(OPTIMIZERS)}")
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if optimizer == "sgd":
        kwargs["momentum"] = momentum
    return OPTIMIZERS[optimizer](params, **kwargs)


@dataclass
class Budget:
    """A limit on unlearning: training examples processed (deterministic), wall seconds from :meth:`start`, or neither."""

    seconds: float | None = None
    examples: int | None = None
    deadline: float | None = field(default=None, init=False)

    def start(self) -> None:
        if self.seconds is not None:
            self.deadline = time.perf_counter() + self.seconds

    def spent(self, examples: int) -> bool:
        return (self.examples is not None and examples >= self.examples) or (
            self.deadline is not None and time.perf_counter() >= self.deadline)


@dataclass
class LoopReport:
    """What an optimisation did: its steps, the examples it processed, wall seconds, and whether the budget or a
    non-finite loss stopped it."""

    steps: int = 0
    examples: int = 0
    seconds: float = 0.0
    budget_exhausted: bool = False
    diverged: bool = False


def learning_rate_factor(step: int, epoch: int, warmup_steps: int, milestones: list, decay: float) -> float:
    """Linear warm-up over the first ``warmup_steps`` optimiser steps, times ``decay`` per milestone epoch passed."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    return warm * decay ** sum(epoch >= m for m in milestones)


def cosine_factor(t: float, total: float, floor: float = 0.0) -> float:
    """Cosine annealing from 1 at ``t = 0`` to ``floor`` at ``t = total`` (torch's ``CosineAnnealingLR``, ``eta_min`` as a
    share of the base rate)."""
    return floor + (1 - floor) * (1 + math.cos(math.pi * t / total)) / 2


SCHEDULE_KEYS = ("lr_decay_epochs", "lr_decay", "grad_accum_steps", "max_grad_norm", "warmup_steps")


def objective_optimizer(objective, params, group: str = "main") -> tuple[torch.optim.Optimizer, dict]:
    """The optimiser that the objective's settings of ``group`` name, and the rest of those settings (schedule,
    accumulation, clipping)."""
    settings = objective.optimizer_settings(group)
    schedule = {key: settings.pop(key) for key in SCHEDULE_KEYS}
    return make_optimizer(params, **settings), schedule


@dataclass
class _Group:
    """One optimiser of a run: its parameters (those trainable when it was made), settings, steps and pending batches."""

    optimizer: torch.optim.Optimizer
    params: list
    accumulate: int
    max_norm: float
    base_lrs: list
    steps: int = 0
    pending: int = 0

    @classmethod
    def of(cls, objective, model: torch.nn.Module, group: str) -> _Group:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer, schedule = objective_optimizer(objective, params, group)
        return cls(optimizer, params, schedule["grad_accum_steps"], schedule["max_grad_norm"],
                   [g["lr"] for g in optimizer.param_groups])


def optimise(objective, model: torch.nn.Module, epochs: int, device: torch.device, precision: str,
             budget: Budget | None = None, desc: str = "train") -> LoopReport:
    """Run ``objective`` (a :class:`mubench.api.Method`) on ``model`` for ``epochs`` epochs.

    Each epoch runs the objective's passes in order. Each pass's batches step the
    optimiser of the objective's ``optimizer_group(phase, epoch)``, made when first
    needed over the parameters trainable then, from ``optimizer_settings(group)``:
    gradients of ``grad_accum_steps`` batches (fewer at the end of a pass) make one
    step, after the objective's gradient surgery and clipping to ``max_grad_norm``
    (0: none), at the learning rate times ``learning_rate_factor(group, step, epoch)``
    (by default a linear warm-up over ``warmup_steps`` steps and decay at
    ``lr_decay_epochs``). The objective's ``step`` is the optimiser step (over all
    groups) the current batch contributes to. The model is in train mode, or in eval
    mode for an objective whose ``train_mode`` is False (BatchNorm statistics frozen,
    no dropout).
    """
    groups: dict[str, _Group] = {}
    report = LoopReport()
    model.train(objective.train_mode)
    start = time.perf_counter()
    with tqdm(desc=desc, unit="batch", disable=None, leave=False) as bar:  # on a terminal only, with its rate and ETA
        for epoch, phase, batch, last in _batches(objective, epochs, bar):
            name = objective.optimizer_group(phase, epoch)
            group = groups.get(name) or groups.setdefault(name, _Group.of(objective, model, name))
            objective.step = report.steps
            batch = batch.to(device)
            with autocast(device, precision):
                loss = objective.loss(batch, phase)
            (loss / group.accumulate if group.accumulate > 1 else loss).backward()
            report.examples += len(batch)
            bar.update()
            group.pending += 1
            if group.pending < group.accumulate and not last:
                continue
            group.pending = 0
            objective.after_backward()
            if group.max_norm > 0:
                torch.nn.utils.clip_grad_norm_(group.params, group.max_norm)
            factor = objective.learning_rate_factor(name, group.steps, epoch)
            for param_group, lr in zip(group.optimizer.param_groups, group.base_lrs):
                param_group["lr"] = lr * factor
            group.optimizer.step()
            model.zero_grad(set_to_none=True)
            group.steps += 1
            report.steps += 1
            if budget is not None and budget.spent(report.examples):
                report.budget_exhausted = True
                log.warning("%s: stopped by its budget after %d steps (epoch %d of %d)", desc, report.steps, epoch + 1, epochs)
                break
            if last and not torch.isfinite(loss.detach()).item():  # one device sync per pass
                report.diverged = True
                log.warning("%s: the loss became non-finite in epoch %d (phase %s); stopped", desc, epoch + 1, phase)
                break
    report.seconds = time.perf_counter() - start
    return report


def accumulate_gradients(model: torch.nn.Module, batches, loss, device: torch.device, precision: str) -> list[torch.Tensor | None]:
    """The gradient of ``loss(batch)`` summed over ``batches``, from zero, per trainable parameter (None where none flows).

    The model is in eval mode and its ``.grad`` fields are cleared afterwards (saliency
    maps, Fisher-style estimates).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    model.zero_grad(set_to_none=True)
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            value = loss(batch)
        value.backward()
    grads = [p.grad for p in params]
    model.zero_grad(set_to_none=True)
    return grads


def _batches(objective, epochs: int, bar):
    """(epoch, phase, batch, last of its pass) for every batch; ``bar``'s total is set from the first epoch's passes
    (an estimate for methods whose passes change from epoch to epoch)."""
    for epoch in range(epochs):
        passes = objective.passes(epoch)
        if epoch == 0:
            bar.total = epochs * sum(len(loader) for _, loader in passes)
            bar.refresh()
        for phase, loader in passes:
            remaining = len(loader)
            for batch in loader:
                remaining -= 1
                yield epoch, phase, batch, remaining == 0
