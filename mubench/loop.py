"""The one training loop and the one evaluation loop.

Device placement, precision (bf16 autocast on GPU), progress bars, learning-rate
decay and the time budget live here, once; methods only say what is particular
to them (see :class:`mubench.api.Method`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch._dynamo  # noqa: F401  torch's optimisers import it on first use (seconds); not inside a timed run
from tqdm.auto import tqdm

from mubench.errors import UserError

log = logging.getLogger("mubench")

OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device '{name}': expected auto, cpu or cuda")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 autocast on CUDA and fp32 elsewhere."""
    if name == "auto":
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
    """A limit on unlearning: wall seconds from :meth:`start`, optimiser steps, or neither."""

    seconds: float | None = None
    steps: int | None = None
    deadline: float | None = field(default=None, init=False)

    def start(self) -> None:
        if self.seconds is not None:
            self.deadline = time.perf_counter() + self.seconds

    def spent(self, steps: int) -> bool:
        return (self.deadline is not None and time.perf_counter() >= self.deadline) or (
            self.steps is not None and steps >= self.steps)


@dataclass
class LoopReport:
    """What an optimisation did: its steps, wall seconds, and whether the budget or a non-finite loss stopped it."""

    steps: int = 0
    seconds: float = 0.0
    budget_exhausted: bool = False
    diverged: bool = False


def optimise(objective, model: torch.nn.Module, epochs: int, device: torch.device, precision: str,
             budget: Budget | None = None, desc: str = "train") -> LoopReport:
    """Run ``objective`` (a :class:`mubench.api.Method`) on ``model`` for ``epochs`` epochs.

    Each epoch runs the objective's passes in order; each batch takes one optimiser
    step on the objective's loss. Learning-rate decay follows ``lr_decay_epochs``.
    """
    settings = objective.optimizer_settings()
    milestones = settings.pop("lr_decay_epochs")
    decay = settings.pop("lr_decay")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, **settings)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, decay) if milestones else None
    report = LoopReport()
    model.train()
    start = time.perf_counter()
    with tqdm(desc=desc, unit="step", disable=None, leave=False) as bar:
        for epoch, phase, batch, last in _batches(objective, epochs, scheduler):
            batch = batch.to(device)
            with autocast(device, precision):
                loss = objective.loss(batch, phase)
            loss.backward()
            objective.after_backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            report.steps += 1
            bar.update()
            if budget is not None and budget.spent(report.steps):
                report.budget_exhausted = True
                log.warning("%s: stopped by its time budget after %d steps (epoch %d of %d)", desc, report.steps, epoch + 1, epochs)
                break
            if last and not torch.isfinite(loss.detach()).item():  # one device sync per pass
                report.diverged = True
                log.warning("%s: the loss became non-finite in epoch %d (phase %s); stopped", desc, epoch + 1, phase)
                break
    report.seconds = time.perf_counter() - start
    return report


def _batches(objective, epochs: int, scheduler):
    """(epoch, phase, batch, last of its pass) for every step; decays the learning rate per epoch."""
    for epoch in range(epochs):
        for phase, loader in objective.passes(epoch):
            remaining = len(loader)
            for batch in loader:
                remaining -= 1
                yield epoch, phase, batch, remaining == 0
        if scheduler:
            scheduler.step()


def predict(task, model: torch.nn.Module, loader, device: torch.device, precision: str, desc: str = "eval") -> dict[str, np.ndarray]:
    """The task's per-example outputs over ``loader``, concatenated, in loader order."""
    model.eval()
    chunks: dict[str, list] = {}
    with torch.inference_mode(), tqdm(loader, desc=desc, unit="batch", disable=None, leave=False) as bar:
        for batch in bar:
            batch = batch.to(device)
            with autocast(device, precision):
                logits = task.forward(model, batch.inputs)
            for key, value in task.eval_outputs(logits.float(), batch.inputs).items():
                chunks.setdefault(key, []).append(value.detach().float().cpu())
    return {key: torch.cat(values).numpy() for key, values in chunks.items()}


def evaluate(task, model: torch.nn.Module, data, parts, batch_size: int, device: torch.device, precision: str,
             max_sizes: dict | None = None) -> tuple[dict, dict]:
    """Per-example outputs and ``<part>_<metric>`` metrics of ``model`` on each of ``parts``."""
    outputs, metrics = {}, {}
    for part in parts:
        loader = data.loader(part, batch_size, shuffle=False, max_size=(max_sizes or {}).get(part))
        outputs[part] = predict(task, model, loader, device, precision, desc=f"eval {part}")
        metrics.update({f"{part}_{name}": value for name, value in task.metrics(outputs[part]).items()})
    return outputs, metrics
