"""Evaluation, in one place: per-example records of a model on D_test, D_f and D_r, the card's metrics
and attacks over them, and MU-Bench's overall score.

The task type turns a batch into records (:meth:`mubench.api.TaskType.evaluate_batch`),
asked only for the columns the selected metrics need; metrics are plugins
(:class:`mubench.api.Metric`, hook ``mubench_metrics``) that the card's ``metrics:``
list selects. Attacks are seeded from the deletion's split seed, never the run seed,
so that the original model's evaluation is the same for every run that shares it.
"""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from mubench.api.metric import Metric
from mubench.errors import UserError, unknown_name
from mubench.loop import autocast

EVAL_PARTS = ("test", "forget", "retain")


def select_metrics(card, task, available: dict[str, Metric]) -> list[Metric]:
    """The card's ``metrics:`` as registered metrics; each must be computable from the task's records."""
    chosen = []
    for name in card.data["metrics"]:
        if name not in available:
            raise unknown_name(f"metric (in {card.path})", name, available)
        metric = available[name]
        missing = metric.needs - task.records
        if missing:
            raise UserError(f"{card.path}: metric '{name}' needs {', '.join(sorted(missing))}, "
                            f"which task type '{task.name}' does not record")
        chosen.append(metric)
    names = {m.name for m in chosen}
    required = {"accuracy": {task.metric}, "generation": {task.metric, "knowledge_gap"}}[task.overall]
    if not required <= names:
        raise UserError(f"{card.path}: key 'metrics': the overall score of task type '{task.name}' needs "
                        f"{', '.join(sorted(required - names))}")
    return chosen


def concatenate(chunks: dict[str, list]) -> dict:
    """Per-batch record columns joined: tensors into one array, lists (texts, per-token arrays) into one list."""
    out = {}
    for key, values in chunks.items():
        if torch.is_tensor(values[0]):
            out[key] = torch.cat([v.detach().float().cpu() for v in values]).numpy()
        else:
            out[key] = [item for value in values for item in value]
    return out


class Evaluator:
    """Evaluates a model on a task's parts with a list of metrics (the card's, by default)."""

    def __init__(self, task, metrics: list[Metric], device: torch.device, precision: str, batch_size: int = 256,
                 max_sizes: dict | None = None, seed: int = 0, max_samples: int = 8):
        self.task, self.metrics = task, metrics
        self.device, self.precision = device, precision
        self.batch_size, self.max_sizes, self.seed, self.max_samples = batch_size, max_sizes or {}, seed, max_samples
        self.needs = frozenset().union(*(m.needs for m in metrics)) | ({"stratum"} & task.records)
        if self.needs & task.generated:  # what people look at comes with the generations metrics need anyway
            self.needs |= task.sample_records

    @classmethod
    def for_card(cls, card, task, metrics: list[Metric], device, precision: str) -> Evaluator:
        """The card's ``eval`` settings (batch size, a cap on evaluated D_r); attacks seeded by the split seed."""
        return cls(task, metrics, device, precision, card.eval.get("batch_size", 256),
                   {"retain": card.eval.get("max_retain"), "train": card.eval.get("max_retain")}, card.split_seed,
                   card.eval.get("samples_per_part", 8))

    def records(self, model: torch.nn.Module, loader, desc: str = "eval", needs: frozenset | None = None) -> dict:
        """The task's per-example records over ``loader`` (the columns in ``needs``, by default all the metrics need), in loader order."""
        model.eval()
        needs = self.needs if needs is None else needs
        chunks: dict[str, list] = {}
        with torch.inference_mode(), tqdm(loader, desc=desc, unit="batch", disable=None, leave=False) as bar:
            for batch in bar:
                batch = batch.to(self.device)
                with autocast(self.device, self.precision):
                    records = self.task.evaluate_batch(model, batch.inputs, needs)
                for key, value in records.items():
                    chunks.setdefault(key, []).append(value)
        return concatenate(chunks)

    def evaluate(self, model: torch.nn.Module, data, parts=EVAL_PARTS) -> tuple[dict, dict]:
        """Records of each of ``parts`` and the metrics: ``<part>_<name>``, and the D_f attacks when D_f is among the parts.

        With a ``forgotten`` part (class-wise deletion) the attacks take its records as
        the non-members: test examples of D_f's own classes. The task's ``generated``
        columns are recorded on the sample :meth:`TaskType.generation_positions` picks.
        """
        records, values = {}, {}
        generated = self.needs & self.task.generated
        for part in parts:
            examples = data.part(part, max_size=self.max_sizes.get(part))
            loader = data.loader_of(examples, self.batch_size)
            records[part] = self.records(model, loader, f"eval {part}", self.needs - generated)
            if generated:  # generations of a sample of the part (e.g. a few images per class prompt)
                sample = examples.subset(self.task.generation_positions(examples))
                made = self.records(model, data.loader_of(sample, self.batch_size), f"generate {part}", generated)
                records[part] |= {key: made[key] for key in generated if key in made}
            for metric in self.metrics:
                if metric.scope == "split":
                    values[f"{part}_{metric.name}"] = metric.compute(records[part])
        if set(EVAL_PARTS) <= set(parts):
            attacked = records | ({"test": records["forgotten"]} if "forgotten" in records else {})
            for metric in self.metrics:
                if metric.scope == "forget":
                    values[f"forget_{metric.name}"] = metric.compute(attacked, self.seed)
        return records, values


def overall_score(task, block: dict, original: dict) -> float:
    """MU-Bench's overall score for the task's kind, on a 0–1 scale.

    ``accuracy``: the harmonic mean of test retention 1 − |test − test₀| and
    closeness of D_f to chance 1 − |forget − chance|; 0 when the test metric falls
    by more than 20% relative to the original. ``generation`` (MU-Bench's SAMSum
    selection score, every term 0–1): (test + (1 − forget) + knowledge gap) / 3.
    """
    metric = task.metric
    test, forget = block[f"test_{metric}"], block[f"forget_{metric}"]
    if task.overall == "generation":
        gap = block["forget_knowledge_gap"]
        terms = (test, 1 - forget, gap)
        return 0.0 if any(math.isnan(t) for t in terms) else sum(terms) / 3
    return accuracy_overall(test, original[f"test_{metric}"], forget, task.chance)


def accuracy_overall(test: float, test_original: float, forget: float, chance: float) -> float:
    """H(1 − |test − test_original|, 1 − |forget − chance|), and 0 when test < 0.8 · test_original."""
    if test < 0.8 * test_original:
        return 0.0
    keep, forgot = 1 - abs(test - test_original), 1 - abs(forget - chance)
    return 0.0 if keep + forgot == 0 else 2 * keep * forgot / (keep + forgot)


def assess(evaluator: Evaluator, model: torch.nn.Module, data, original: dict | None = None, samples: dict | None = None) -> dict:
    """Metrics on D_test, D_f and D_r (and a shifted test set, if any), the attacks on D_f, and the overall score
    (against ``original``'s block, or itself).

    A ``samples`` mapping receives, per part, the first ``max_samples`` of what the task
    generated for people to look at (its :attr:`~mubench.api.TaskType.sample_records`).
    """
    extra = (("shifted",) if data.shifted is not None else ()) + (("forgotten",) if data.forgotten_rows is not None else ())
    records, values = evaluator.evaluate(model, data, EVAL_PARTS + extra)
    if samples is not None:
        for part, columns in records.items():
            kept = {key: columns[key][:evaluator.max_samples] for key in evaluator.task.sample_records if key in columns}
            if kept:
                samples[part] = kept
    values["overall_score"] = overall_score(evaluator.task, values, original or values)
    return values


def describe(metrics: list[Metric]) -> dict:
    """Each metric's direction and meaning, as a result records it."""
    return {m.name: m.describe() for m in metrics}
