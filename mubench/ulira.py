"""U-LiRA (Hayes et al. 2024, "Inexact unlearning needs more careful evaluations"), Deep Unlearn's per-sample attack.

The targets are the run's D_f. Shadow originals are trained on random halves of the
training split, in complementary pairs, each half holding half of the targets; every
shadow is then unlearned with the method under test on the targets it holds (its own
D_f; its D_r is the rest of its half). So each target is, in half the shadows,
trained on and unlearned, and in the other half never seen. For each target, Gaussians
are fitted to its statistic (the logit-scaled confidence of its true class,
``z_y − logsumexp_{j≠y} z_j``; classifiers only) under "unlearned" and under "never trained on", over all shadows but one;
on the held-out shadow the likelihood ratio guesses which targets it unlearned. The
score is that guess's balanced accuracy, averaged over the held-out shadows (each in
turn), with its 95% interval: 0.5 is perfect unlearning (retraining scores about that),
more means the unlearned models still tell their deleted examples apart.

Shadow originals are cached like θ₀ (one per half, for all methods); the shadows'
unlearning runs locally or as Ray tasks.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import hashlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mubench import __version__
from mubench.api.registry import Registry
from mubench.data import UnlearningData
from mubench.errors import UserError
from mubench.evaluation import Evaluator
from mubench.files import write_json
from mubench.harness import Plan, RunConfig, planned_filename, resolve, unlearn
from mubench.loop import autocast
from mubench.originals import resolve_original
from mubench.parallel import ray_map
from mubench.results import ULIRA_SUFFIX, environment, given, mean_ci, method_info, validate_ulira
from mubench.splits import indices_sha256

log = logging.getLogger("mubench")

SCHEMA_VERSION = 1


@dataclass
class UliraConfig:
    """What ``mubench ulira`` takes: the run whose method is attacked, the number of shadows and where they run."""

    run: RunConfig
    shadows: int = 16
    executor: str = "local"
    ray: dict = field(default_factory=dict)


class Rows(torch.utils.data.Dataset):
    """The examples ``rows`` of an encoded split, renumbered from zero."""

    def __init__(self, data, rows: np.ndarray):
        self.data, self.rows = data, np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index):
        return self.data[int(self.rows[index])]

    def __getitems__(self, indices):
        chosen = self.rows[np.asarray(indices)].tolist()
        fetch = getattr(self.data, "__getitems__", None)
        return fetch(chosen) if fetch else [self.data[i] for i in chosen]


def halves(n: int, targets: np.ndarray, shadows: int, seed: int) -> list[np.ndarray]:
    """The shadows' training rows: ``shadows // 2`` random halves of ``range(n)`` and their complements, each half
    holding half of ``targets`` (and half of the rest), so that every example is in exactly half the shadows."""
    rng = np.random.default_rng(seed)
    rest = np.setdiff1d(np.arange(n), targets)
    out = []
    for _ in range(shadows // 2):
        inside = np.zeros(n, dtype=bool)
        for group in (targets, rest):
            inside[rng.permutation(group)[:len(group) // 2]] = True
        out += [np.flatnonzero(inside), np.flatnonzero(~inside)]
    return out


def statistic(task, model: torch.nn.Module, data: UnlearningData, device, precision: str, batch_size: int) -> np.ndarray:
    """Each D_f example's statistic under ``model``, in D_f's order: the logit-scaled confidence of its true class."""
    model.eval()
    values = []
    with torch.no_grad(), autocast(device, precision):
        for batch in data.loader("forget", batch_size, shuffle=False):
            batch = batch.to(device)
            logits = task.forward(model, batch.inputs).float()
            labels = batch.inputs["labels"]
            true = logits.gather(1, labels[:, None]).squeeze(1)
            others = logits.scatter(1, labels[:, None], -math.inf)
            values.append((true - torch.logsumexp(others, dim=1)).cpu())
    return torch.cat(values).numpy().astype(np.float64)


def attack(stats: np.ndarray, unlearned: np.ndarray) -> np.ndarray:
    """The balanced accuracy on each shadow in turn of the likelihood-ratio test fitted on all the others.

    ``stats[k, j]``: target j's statistic under unlearned shadow k; ``unlearned[k, j]``:
    whether shadow k trained on j and unlearned it (else it never saw j). Per target,
    Gaussians (mean, sample std floored at 1e-4) are fitted under each hypothesis; the
    guess is "unlearned" where its log-density is strictly higher. A target with fewer
    than two fitting shadows under either hypothesis is left out of that round.
    """
    k = len(stats)
    scores = np.full(k, np.nan)
    for held in range(k):
        others = np.arange(k) != held
        s, m = stats[others], unlearned[others]
        fits = []
        for member in (True, False):
            mask = m == member
            count = mask.sum(axis=0)
            mean = np.where(count > 0, (s * mask).sum(axis=0) / np.maximum(count, 1), 0.0)
            var = ((s - mean) ** 2 * mask).sum(axis=0) / np.maximum(count - 1, 1)
            fits.append((mean, np.maximum(np.sqrt(var), 1e-4), count))
        usable = (fits[0][2] >= 2) & (fits[1][2] >= 2)
        x = stats[held]
        log_in, log_out = (-np.log(sd) - 0.5 * ((x - mean) / sd) ** 2 for mean, sd, _ in fits)
        guess = log_in > log_out
        truth = unlearned[held]
        hits = [(guess == truth)[usable & (truth == member)] for member in (True, False)]
        if all(len(h) for h in hits):
            scores[held] = (hits[0].mean() + hits[1].mean()) / 2
    return scores


@dataclass
class ShadowOutcome:
    """One shadow: the statistic of every target under its unlearned model, which targets it held, and its cost."""

    index: int
    stats: np.ndarray
    unlearned: np.ndarray
    original_sha256: str | None
    unlearn_s: float


_worker: dict = {}  # a Ray worker's registry and loaded data, kept between the shadows it runs


def shadow_plan(config: UliraConfig, registry: Registry, loaded: dict) -> Plan:
    """The attacked run, resolved with its data loaded (every user error here)."""
    plan = resolve(dataclasses.replace(config.run, reference=None, save_model=False, validation=None), registry, loaded)
    if plan.prepared.task.output != "class_logits":
        raise UserError(f"U-LiRA reads each example's class logits; task type '{plan.prepared.task.name}' gives "
                        f"{plan.prepared.task.output.replace('_', ' ')}")
    plan.prepared.load()
    return plan


def run_shadow(config: UliraConfig, index: int, registry: Registry, loaded: dict) -> ShadowOutcome:
    """Shadow ``index``: its original (cached, trained once for every method), unlearned on the targets it holds."""
    plan = shadow_plan(config, registry, loaded)
    prepared = plan.prepared
    half = halves(prepared.n_train, prepared.forget, config.shadows, prepared.card.split_seed)[index]
    card = prepared.card.with_seeds(original_seed=int(prepared.card.data["train"].get("seed", 0)) + index)
    train = Rows(prepared.train, half)
    data_sha256 = hashlib.sha256(f"{prepared.data_sha256}/shadow/{indices_sha256(half)}".encode()).hexdigest()
    evaluator = Evaluator.for_card(card, prepared.task, prepared.metrics, plan.device, plan.precision)
    original = resolve_original(card, prepared.family, train, prepared.test, data_sha256, evaluator,
                                fix="delete it; the next `mubench ulira` retrains it")
    shadow = copy.copy(prepared)  # the same task on the shadow's half: its D_f is the targets it holds
    shadow.card, shadow.train, shadow.n_train = card, train, len(half)
    shadow.forget = np.flatnonzero(np.isin(half, prepared.forget))
    ctx, report, _, _ = unlearn(dataclasses.replace(plan, prepared=shadow), original)
    targets = UnlearningData(prepared.task, prepared.train, prepared.test, prepared.forget, 0, plan.device)
    stats = statistic(prepared.task, ctx.model, targets, plan.device, plan.precision, evaluator.batch_size)
    return ShadowOutcome(index, stats, np.isin(prepared.forget, half), original.weights_sha256, report.seconds)


def ray_shadow(job: tuple) -> ShadowOutcome:
    """A shadow in a Ray worker, reusing the worker's registry and loaded data."""
    config, index = job
    key = tuple(config.run.include_paths)
    if _worker.get("key") != key:
        _worker.update(key=key, registry=Registry(config.run.include_paths), loaded={})
    return run_shadow(config, index, _worker["registry"], _worker["loaded"])


def ulira(config: UliraConfig, registry: Registry | None = None, skip_done: bool = False) -> tuple[dict | None, Path]:
    """Attack the run of ``config`` with U-LiRA over ``config.shadows`` shadows; returns the result and its file (with
    ``skip_done``, None and the file when it exists already)."""
    if config.shadows < 6 or config.shadows % 2:
        raise UserError(f"--shadows {config.shadows}: expected an even number, 6 or more (shadows come in complementary pairs, "
                        f"and each target needs two of each kind besides the held-out one)")
    if config.executor not in ("local", "ray"):
        raise UserError(f"executor {config.executor!r}: expected 'local' or 'ray'")
    started = time.perf_counter()
    registry = registry or Registry(config.run.include_paths)
    loaded = {}
    plan = shadow_plan(config, registry, loaded)
    path = Path(config.run.output_path) / ulira_filename(plan, config.shadows)
    if skip_done and path.is_file():
        return None, path
    if len(plan.prepared.forget) < 4:
        raise UserError(f"U-LiRA needs 4 targets or more; D_f holds {len(plan.prepared.forget)}")
    jobs = list(range(config.shadows))
    if config.executor == "ray":
        outcomes = list(ray_map(ray_shadow, [[(config, index) for index in jobs]], config.ray, "ulira"))
    else:
        outcomes = [run_shadow(config, index, registry, loaded) for index in jobs]
    outcomes.sort(key=lambda outcome: outcome.index)
    scores = attack(np.stack([o.stats for o in outcomes]), np.stack([o.unlearned for o in outcomes]))
    result = assemble(plan, config, outcomes, scores, time.perf_counter() - started)
    validate_ulira(result, path)
    write_json(path, result)
    return result, path


def ulira_filename(plan: Plan, shadows: int) -> str:
    """The attacked run's file name (see :func:`mubench.harness.planned_filename`) with ``__shadows<N>.ulira.json``."""
    return planned_filename(plan).removesuffix(".json") + f"__shadows{shadows}{ULIRA_SUFFIX}"


def assemble(plan: Plan, config: UliraConfig, outcomes: list[ShadowOutcome], scores: np.ndarray, total_s: float) -> dict:
    """The U-LiRA result (``mubench/schemas/ulira.schema.json``)."""
    prepared = plan.prepared
    finite = [float(s) for s in scores if math.isfinite(s)]
    summary = mean_ci(finite)
    mean, half = summary if summary is not None else (None, math.nan)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {
        "schema_version": SCHEMA_VERSION, "kind": "ulira", "mubench_version": __version__,
        "task": prepared.card.name, "method": plan.method_cls.name, "model": prepared.family.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": {"deletion_ratio": prepared.ratio, "seed": plan.seed, "shadows": config.shadows, "method_args": plan.reported_args[0],
                   "method_args_sources": plan.reported_args[1],
                   "given_args": given(*plan.reported_args),
                   "protocol": prepared.card.data.get("protocol", "mubench"), "device": plan.device.type,
                   "precision": plan.precision, "time_budget": plan.budget_setting}
                  | ({"tuned": plan.tuned} if plan.tuned else {}),
        "split": {"n_train": prepared.n_train, "n_targets": len(prepared.forget), "forget_sha256": indices_sha256(prepared.forget),
                  "split_seed": prepared.card.split_seed, "data_sha256": prepared.data_sha256}
                 | ({"forget_classes": [prepared.task.label_names[i] for i in prepared.classes]} if prepared.classwise else {}),
        "method_info": method_info(plan.method_cls),
        "ulira": {"statistic": "logit-scaled confidence",
                  "balanced_accuracy": {"mean": mean, "std": std, "ci95": None if math.isnan(half) else half, "n": len(finite)},
                  "per_shadow": [None if not math.isfinite(s) else float(s) for s in scores]},
        "shadows": [{"index": o.index, "original_sha256": o.original_sha256, "unlearn_s": o.unlearn_s,
                     "n_unlearned": int(o.unlearned.sum())} for o in outcomes],
        "times": {"unlearn_s": sum(o.unlearn_s for o in outcomes), "total_s": total_s},
        "task_card": {"sha256": prepared.card.sha256},
        "environment": environment(plan.device),
    }
