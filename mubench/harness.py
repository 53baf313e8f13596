"""The harness core: resolve task × model × method, unlearn, evaluate, emit the result."""
from __future__ import annotations

import datetime
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mubench import __version__
from mubench.api.method import Context
from mubench.api.metrics import attack_metrics, overall_score
from mubench.api.registry import Registry
from mubench.data import UnlearningData, fingerprint, load_splits, preprocessed
from mubench.errors import UserError
from mubench.files import ensure_writable, write_json
from mubench.loop import Budget, evaluate, resolve_device, resolve_precision
from mubench.lora import LoraSpec, apply_lora
from mubench.originals import Family, resolve_original
from mubench.results import SCHEMA_VERSION, environment, finite, result_filename, validate_result
from mubench.splits import forget_indices, indices_sha256

log = logging.getLogger("mubench")

EVAL_PARTS = ("test", "forget", "retain")


@dataclass
class RunConfig:
    """Everything ``mubench run`` takes; None means the card's default."""

    task: str
    method: str
    model: str | None = None
    deletion_ratio: float | None = None
    seed: int | None = None
    method_args: dict = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"
    time_budget: str = "retrain"
    output_path: Path = Path("results")
    include_paths: list = field(default_factory=list)
    data_dir: Path | None = None
    lora: LoraSpec | None = None
    original: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_time_budget(text: str) -> str | float:
    """``retrain`` (unlearning may not take longer than retraining), ``none``, or seconds."""
    if text in ("retrain", "none"):
        return text
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"--time-budget {text!r}: expected 'retrain', 'none' or a positive number of seconds")
    return seconds


class Prepared:
    """A task with its data loaded and encoded, its deletion set drawn and its model family chosen."""

    def __init__(self, registry: Registry, task_name: str, model_name: str | None, ratio: float | None,
                 data_dir: Path | None = None, original: str | None = None):
        self.card = registry.card(task_name)
        self.task = registry.task_type(self.card)
        name, spec = self.card.model(model_name)
        if original is not None:  # --original: `train`, a checkpoint or a hub id instead of the card's
            spec = spec | {"original": original}
        self.family = Family(name, spec, registry.architecture(self.card, spec["architecture"]), self.task)
        self.ratio = self.card.default_ratio if ratio is None else ratio
        if self.ratio not in self.card.ratios:
            raise UserError(f"deletion ratio {self.ratio} is not one of task '{self.card.name}''s ratios: "
                            f"{', '.join(f'{r:g}' for r in self.card.ratios)}")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such folder")
        self.registry, self.data_dir = registry, data_dir

    def load(self) -> None:
        """Read the data, draw D_f, and preprocess (cached) and encode the splits."""
        self.task.use_model(self.family.spec.get("params", {}))
        splits = load_splits(self.card, self.registry.dataset_loaders, self.data_dir, self.registry.dataset_adapters)
        self.task.prepare(splits["train"])
        self.n_train, self.n_test = len(splits["train"]), len(splits["test"])
        self.data_sha256 = fingerprint(splits["train"])
        self.forget = forget_indices(self.n_train, self.task.strata(splits["train"]), self.ratio, self.card.split_seed)
        if self.task.preprocesses:
            splits = {"train": preprocessed(self.task, splits["train"], "train", self.data_sha256, self.card.name),
                      "test": preprocessed(self.task, splits["test"], "test", fingerprint(splits["test"]), self.card.name)}
        self.train, self.test = self.task.encode(splits["train"]), self.task.encode(splits["test"])

    def original(self, device, precision, retrain_cache: bool = False):
        return resolve_original(self.card, self.family, self.train, self.test, self.data_sha256, device, precision, retrain_cache)

    def context(self, model: torch.nn.Module, seed: int, device, precision: str, budget: Budget | None = None,
                lora: LoraSpec | None = None) -> Context:
        """What a method works with to unlearn this task's D_f from ``model``, seeded with ``seed``.

        With ``lora``, fresh models (retraining's, Bad-T's teacher) carry the same adapters.
        """
        data = UnlearningData(self.task, self.train, self.test, self.forget, seed, device)
        build = self.family.build if lora is None else (lambda: apply_lora(self.family.build(), lora)[0])
        return Context(self.task, model, data, device, precision, build, torch.Generator().manual_seed(seed),
                       budget or Budget())


def unlearning_budget(setting, method_cls, original, card, n_retain: int, device) -> Budget:
    """The budget unlearning runs under; by default the time retraining would take.

    Retraining time is the original's recorded training time scaled to |D_r| when it
    was trained on this kind of device; otherwise retraining's optimiser steps.
    """
    if setting == "none" or not method_cls.time_limited:
        return Budget()
    if isinstance(setting, float):
        return Budget(seconds=setting)
    sidecar = original.sidecar
    if sidecar.get("train_seconds") and sidecar.get("device") == device.type and sidecar.get("n_train"):
        return Budget(seconds=sidecar["train_seconds"] * n_retain / sidecar["n_train"])
    recipe = card.data["train"]
    return Budget(steps=int(recipe.get("epochs", 1)) * math.ceil(n_retain / int(recipe.get("batch_size", 32))))


def assess(card, task, model, data: UnlearningData, device, precision: str, seed: int) -> dict:
    """The task metrics on D_test, D_f and D_r, and the membership-inference attacks on D_f."""
    outputs, metrics = evaluate(task, model, data, EVAL_PARTS, card.eval.get("batch_size", 256), device, precision,
                                {"retain": card.eval.get("max_retain")})
    return metrics | attack_metrics(outputs, seed)


def run(config: RunConfig, registry: Registry | None = None) -> tuple[dict, Path]:
    """Unlearn and evaluate as ``config`` says; returns the result and the file it was written to."""
    started = time.perf_counter()
    registry = registry or Registry(config.include_paths)
    prepared = Prepared(registry, config.task, config.model, config.deletion_ratio, config.data_dir, config.original)
    card, task = prepared.card, prepared.task
    method_cls = registry.method(config.method)
    args = method_cls.resolve_args(card, config.method_args)
    budget_setting = parse_time_budget(config.time_budget)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed = card.seeds[0] if config.seed is None else config.seed
    reason = method_cls.unsupported(task)
    if reason:
        raise UserError(f"method '{method_cls.name}' cannot run on task '{card.name}': {reason}")
    ensure_writable(config.output_path)

    prepared.load()
    seed_everything(seed)
    t0 = time.perf_counter()
    original = prepared.original(device, precision)
    original_s = time.perf_counter() - t0

    budget = unlearning_budget(budget_setting, method_cls, original, card, prepared.n_train - len(prepared.forget), device)
    ctx = prepared.context(original.model, seed, device, precision, budget, config.lora)
    data = ctx.data
    t0 = time.perf_counter()
    before = assess(card, task, original.model, data, device, precision, seed)
    eval_s = time.perf_counter() - t0
    n_parameters = sum(p.numel() for p in original.model.parameters())
    peft = None
    if config.lora is not None:
        ctx.model, peft = apply_lora(original.model, config.lora)

    method = method_cls(ctx, args)
    seed_everything(seed)
    log.info("unlearning: %s on %s/%s, |D_f| = %d (%g%%)", method_cls.name, card.name, prepared.family.name,
             len(data.forget), prepared.ratio * 100)
    report = method.unlearn()

    t0 = time.perf_counter()
    after = assess(card, task, ctx.model, data, device, precision, seed)
    eval_s += time.perf_counter() - t0
    metric = task.metric
    for block in (before, after):
        block["overall_score"] = overall_score(block[f"test_{metric}"], before[f"test_{metric}"], block[f"forget_{metric}"], task.chance)

    result = {
        "schema_version": SCHEMA_VERSION,
        "mubench_version": __version__,
        "task": card.name,
        "method": method_cls.name,
        "model": prepared.family.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"deletion_ratio": prepared.ratio, "seed": seed, "method_args": args, "device": device.type,
                   "precision": precision, "time_budget": budget_setting, "peft": peft},
        "split": {"n_train": prepared.n_train, "n_forget": len(data.forget), "n_retain": len(data.retain),
                  "n_test": prepared.n_test, "forget_sha256": indices_sha256(data.forget),
                  "split_seed": card.split_seed, "data_sha256": prepared.data_sha256},
        "results": {"original": finite(before), "unlearned": finite(after)},
        "times": {"unlearn_s": report.seconds, "eval_s": eval_s, "original_s": original_s,
                  "total_s": time.perf_counter() - started},
        "unlearning": {"steps": report.steps, "budget_s": budget.seconds, "budget_steps": budget.steps,
                       "budget_exhausted": report.budget_exhausted, "diverged": report.diverged},
        "model_info": {"architecture": prepared.family.spec["architecture"], "original": original.source,
                       "n_parameters": n_parameters,
                       "trainable_fraction": sum(p.numel() for p in ctx.model.parameters() if p.requires_grad) / n_parameters},
        "task_card": {"sha256": card.sha256},
        "environment": environment(device),
    }
    validate_result(result, "result")
    path = config.output_path / result_filename(result)
    write_json(path, result)
    return result, path
