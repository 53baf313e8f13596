"""The harness core: resolve task × model × method, prepare the data and θ₀, evaluate, unlearn, evaluate, emit the result."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from mubench import __version__
from mubench.api.card import TaskCard
from mubench.api.method import Context
from mubench.api.registry import Registry
from mubench.cache import CacheEntry
from mubench.data import UnlearningData, fingerprint, load_shifted, load_splits, preprocessed
from mubench.errors import UserError
from mubench.evaluation import Evaluator, assess, describe, select_metrics
from mubench.files import atomic_folder, atomic_path, ensure_writable, mubench_home, read_json, sha256_file, write_json
from mubench.loop import Budget, resolve_device, resolve_precision
from mubench.lora import LoraSpec, apply_lora
from mubench.originals import Family, resolve_original
from mubench.results import (
    SCHEMA_VERSION,
    cell_filename,
    environment,
    finite,
    given,
    given_args,
    lora_tag,
    method_info,
    reference_block,
    result_filename,
    validate_result,
)
from mubench.splits import chosen_classes, deletion_order, forget_indices, indices_sha256

log = logging.getLogger("mubench")


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
    split_seed: int | None = None
    original_seed: int | None = None
    reference: str | None = None
    save_model: bool = False
    validation: float | None = None  # tuning: hold out this share of D_r as the test split (see Prepared)
    tuned: Path | None = None  # a file `mubench tune` wrote: its methods.<name> block, and the study it came from


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parse_time_budget(text: str) -> str | float:
    """``retrain`` (unlearning may not process more examples than retraining would), ``none``, or wall seconds."""
    if text in ("retrain", "none"):
        return text
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or math.isinf(seconds):
        raise UserError(f"--time-budget {text!r}: expected 'retrain', 'none' or a positive number of seconds")
    return seconds


def with_seeds(card: TaskCard, spec: dict, split_seed: int | None, original_seed: int | None) -> TaskCard:
    """The card with another deletion set (``--split-seed``) or another θ₀ trained here (``--original-seed``)."""
    if original_seed is not None and spec["original"] != "train":
        raise UserError(f"--original-seed trains θ₀ here, but this family's original is '{spec['original']}' "
                        f"(add --original train)")
    return card.with_seeds(split_seed, original_seed)


class Prepared:
    """A task with its data loaded and encoded, its deletion set drawn and its model family chosen."""

    def __init__(self, registry: Registry, task_name: str, model_name: str | None, ratio: float | None,
                 data_dir: Path | None = None, original: str | None = None, split_seed: int | None = None,
                 original_seed: int | None = None, validation: float | None = None):
        card = registry.checked_card(task_name)
        name, spec = card.model(model_name)
        if original is not None:  # --original: `train`, a checkpoint or a hub id instead of the card's
            spec = spec | {"original": original}
        self.card = with_seeds(card, spec, split_seed, original_seed)
        self.task = registry.task_type(self.card)
        self.family = Family(name, spec, registry.architecture(self.card, spec["architecture"]), self.task)
        self.classwise = self.card.data["deletion"].get("mode", "samples") == "classes"
        if self.classwise and ratio is not None:
            raise UserError(f"task '{self.card.name}' deletes whole classes (deletion.mode: classes): it takes no --deletion-ratio")
        self.ratio = self.card.default_ratio if ratio is None else ratio
        if self.ratio not in self.card.ratios and not self.classwise:
            raise UserError(f"deletion ratio {self.ratio} is not one of task '{self.card.name}''s ratios: "
                            f"{', '.join(f'{r:g}' for r in self.card.ratios)}")
        if data_dir is not None and not Path(data_dir).is_dir():
            raise UserError(f"--data-dir {data_dir}: no such folder")
        self.metrics = select_metrics(self.card, self.task, registry.metrics)
        self.shifted = None  # a shifted test set, read by load() where the card enables one
        self.classes = self.test_rows = self.forgotten_rows = None  # class-wise deletion, drawn by load()
        self.registry, self.data_dir = registry, data_dir
        self.original_given, self.original_seed = original is not None, original_seed
        if validation is not None and not 0 < validation < 1:
            raise UserError(f"validation share {validation}: expected a number between 0 and 1")
        self.validation = validation
        self.full_strata = self.kept_rows = None  # tuning's held-out split: the training split's strata and the rows kept
        self.loaded = False
        self._skeleton = None

    def skeleton(self) -> torch.nn.Module:
        """The family's model without its weights (see :meth:`Family.skeleton`), built once; a task whose data is built
        in (a registered loader that reads no files) is read first, for its exact head."""
        if self._skeleton is None:
            loader = self.registry.dataset_loaders.get(self.card.dataset.get("loader"))
            if not self.loaded and loader is not None and not getattr(loader, "reads_data_dir", False):
                self.task.prepare(load_splits(self.card, self.registry.dataset_loaders)["train"])
            self._skeleton = self.family.skeleton()
        return self._skeleton

    def unsupported(self, method_cls) -> str | None:
        """Why ``method_cls`` cannot run on this task and model family (before any data is loaded), or None."""
        return method_cls.unsupported(self.task, self.skeleton)

    def read(self) -> dict:
        """Read the data and draw D_f; returns the raw splits."""
        self.task.use_model(self.family.spec.get("params", {}))
        splits = load_splits(self.card, self.registry.dataset_loaders, self.data_dir, self.registry.dataset_adapters)
        self.task.prepare(splits["train"])
        if self.validation is not None:
            splits = self.held_out(splits)
        self.n_train, self.n_test = len(splits["train"]), len(splits["test"])
        self.data_sha256 = fingerprint(splits["train"])
        self.strata = self.task.strata(splits["train"])
        self.test_strata = self.task.strata(splits["test"]) if self.classwise else None
        self.draw()
        return splits

    def draw(self) -> None:
        """Draw D_f from the training split's strata: the ratio's stratified sample, or whole classes."""
        if self.classwise:
            self.draw_classes(self.strata, self.test_strata)
        elif self.validation is not None:  # the real run's D_f, minus nothing: the held-out rows all come from D_r
            full = forget_indices(len(self.kept_rows) + self.n_test, self.full_strata, self.ratio, self.card.split_seed)
            self.forget = np.flatnonzero(np.isin(self.kept_rows, full))
        else:
            self.forget = forget_indices(self.n_train, self.strata, self.ratio, self.card.split_seed)

    def held_out(self, splits: dict) -> dict:
        """Tuning's splits, which never touch D_test: a stratified ``validation`` share of D_r (of the whole training
        split for class-wise deletion, so that the forgotten classes have held-out examples) is the test split, and
        the rest the training split. D_f is the real run's; θ₀ and the retrained model are trained without the
        held-out rows (cached apart: the training split's fingerprint differs)."""
        train = splits["train"]
        self.full_strata = self.task.strata(train)
        n = len(train)
        candidates = np.arange(n)
        if not self.classwise:
            candidates = np.setdiff1d(candidates, forget_indices(n, self.full_strata, self.ratio, self.card.split_seed))
        strata = None if self.full_strata is None else self.full_strata[candidates]
        order = deletion_order(len(candidates), strata, self.card.split_seed + 1)
        held = np.sort(candidates[order[:max(1, round(self.validation * len(candidates)))]])
        self.kept_rows = np.setdiff1d(np.arange(n), held)
        return {"train": train.select(self.kept_rows), "test": train.select(held)}

    def load(self) -> None:
        """Read the data, draw D_f, and preprocess (cached) and encode the splits; nothing when already loaded."""
        if self.loaded:
            return
        splits = self.read()
        if self.task.preprocesses:
            splits = {"train": preprocessed(self.task, splits["train"], "train", self.data_sha256, self.card.name),
                      "test": preprocessed(self.task, splits["test"], "test", fingerprint(splits["test"]), self.card.name)}
        self.train, self.test = self.task.encode(splits["train"]), self.task.encode(splits["test"])
        shifted = load_shifted(self.card) if self.validation is None else None
        if shifted is not None and self.task.preprocesses:
            shifted = preprocessed(self.task, shifted, "shifted", fingerprint(shifted), self.card.name)
        self.shifted = None if shifted is None else self.task.encode(shifted)
        self.loaded = True

    def reuse(self, other: Prepared) -> None:
        """Take the data ``other`` loaded (same task, family and data source) and draw this run's D_f from it."""
        for name in ("task", "family", "n_train", "n_test", "data_sha256", "strata", "test_strata", "train", "test", "shifted",
                     "full_strata", "kept_rows"):
            setattr(self, name, getattr(other, name))
        self.draw()
        self.loaded = True

    def draw_classes(self, train_strata, test_strata) -> None:
        """Class-wise deletion: D_f is every training example of the chosen classes; D_test splits into their
        test examples (part ``forgotten``) and the rest (part ``test``)."""
        spec = self.card.data["deletion"]
        if train_strata is None:
            raise UserError(f"task '{self.card.name}': class-wise deletion needs a task type with classes")
        try:
            self.classes = chosen_classes(self.task.label_names, spec.get("classes"), spec.get("n_classes"), self.card.split_seed)
        except ValueError as e:
            raise UserError(f"task '{self.card.name}': {e}") from None
        self.forget = np.flatnonzero(np.isin(train_strata, self.classes))
        self.test_rows = np.flatnonzero(~np.isin(test_strata, self.classes))
        self.forgotten_rows = np.flatnonzero(np.isin(test_strata, self.classes))
        self.ratio = round(len(self.forget) / self.n_train, 4)

    def original(self, device, precision, retrain_cache: bool = False):
        """θ₀ of this task and family (see :func:`mubench.originals.resolve_original`)."""
        evaluator = Evaluator.for_card(self.card, self.task, self.metrics, device, precision)
        return resolve_original(self.card, self.family, self.train, self.test, self.data_sha256, evaluator, retrain_cache,
                                fix=f"rebuild it with `{self.train_command} --force`")

    @property
    def train_command(self) -> str:
        """The ``mubench train`` command that builds this θ₀."""
        words = ["mubench train --task", self.card.name, "--model", self.family.name]
        if self.original_given:
            words += ["--original", "train"]
        if self.original_seed is not None:
            words += ["--original-seed", str(self.original_seed)]
        return " ".join(words)

    def data(self, device, seed: int = 0) -> UnlearningData:
        """D_f, D_r and D_test of this task, with loaders seeded by ``seed`` (evaluation reads them unshuffled)."""
        return UnlearningData(self.task, self.train, self.test, self.forget, seed, device, self.shifted,
                              self.test_rows, self.forgotten_rows)

    def context(self, model: torch.nn.Module, seed: int, device, precision: str, budget: Budget | None = None,
                lora: LoraSpec | None = None) -> Context:
        """What a method works with to unlearn this task's D_f from ``model``, seeded with ``seed``.

        With ``lora``, fresh models (retraining's, Bad-T's teacher) carry the same adapters.
        """
        data = self.data(device, seed)
        build = self.family.build if lora is None else (lambda: apply_lora(self.family.build(), lora)[0])
        return Context(self.task, model, data, device, precision, build, torch.Generator().manual_seed(seed),
                       budget or Budget())


def unlearning_budget(setting, method_cls, card, n_retain: int) -> Budget:
    """The budget unlearning runs under; by default the work retraining would do.

    That is the number of training examples retraining processes (the card's ``train``
    epochs × |D_r|), counted through the optimiser: deterministic, the same on any
    machine under any load. ``--time-budget SECONDS`` sets a wall-clock budget instead.
    """
    if setting == "none" or not method_cls.time_limited:
        return Budget()
    if isinstance(setting, float):
        return Budget(seconds=setting)
    return Budget(examples=int(card.data["train"].get("epochs", 1)) * n_retain)


@dataclass
class Plan:
    """A resolved run: task × model × method with every setting decided, before any data is read."""

    config: RunConfig
    prepared: Prepared
    method_cls: type
    args: dict
    sources: dict
    budget_setting: str | float
    device: torch.device
    precision: str
    seed: int
    evaluator: Evaluator
    tuned: dict | None = None  # what the result records of a --tuned file

    @property
    def reported_args(self) -> tuple[dict, dict]:
        """The hyperparameters a result reports and their sources: those that have an effect (see
        :meth:`~mubench.api.Method.unused_args`)."""
        unused = self.method_cls.unused_args(self.args)
        return ({k: v for k, v in self.args.items() if k not in unused}, {k: v for k, v in self.sources.items() if k not in unused})


def resolve(config: RunConfig, registry: Registry, loaded: dict | None = None) -> Plan:
    """Stage 1: the card, model family, method, hyperparameters, device, seed and metrics; every user error here.

    ``loaded`` keeps the data that earlier runs of this process loaded (a sweep's
    worker), keyed by task, family and data source: a run on the same data reuses it
    and only draws its own D_f.
    """
    prepared = Prepared(registry, config.task, config.model, config.deletion_ratio, config.data_dir, config.original,
                        config.split_seed, config.original_seed, config.validation)
    if loaded is not None:
        key = (config.task, config.model, config.original, config.split_seed, config.original_seed, str(config.data_dir),
               config.validation, config.deletion_ratio if config.validation else None)  # tuning holds out rows by ratio
        if key in loaded and loaded[key].loaded:
            prepared.reuse(loaded[key])
        else:
            loaded[key] = prepared
    card, task = prepared.card, prepared.task
    method_cls = registry.method(config.method)
    sources = {}
    tuned = None if config.tuned is None else read_tuned(config.tuned, method_cls.name)
    args = method_cls.resolve_args(card, config.method_args, sources, tuned and tuned["args"], str(config.tuned))
    budget_setting = parse_time_budget(config.time_budget)
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    seed = card.seeds[0] if config.seed is None else config.seed
    reason = prepared.unsupported(method_cls)
    if reason:
        raise UserError(f"method '{method_cls.name}' cannot run on task '{card.name}': {reason}")
    ensure_writable(config.output_path)
    return Plan(config, prepared, method_cls, args, sources, budget_setting, device, precision, seed,
                Evaluator.for_card(card, task, prepared.metrics, device, precision), tuned and tuned["record"])


def planned_filename(plan: Plan) -> str:
    """The result file name a resolved run will write (see :func:`mubench.results.result_filename`), before it runs;
    a class-wise task's data must be loaded (its classes are drawn from it)."""
    prepared = plan.prepared
    classes = [prepared.task.label_names[i] for i in prepared.classes] if prepared.classwise else None
    lora = plan.config.lora
    return cell_filename(prepared.card.name, prepared.family.name, plan.method_cls.name, prepared.ratio, plan.seed, classes,
                         plan.config.split_seed, plan.config.original_seed, given(*plan.reported_args),
                         lora and lora_tag(lora.rank, lora.fraction, lora.alpha), plan.budget_setting)


def read_tuned(path: Path, method: str) -> dict:
    """A file ``mubench tune`` wrote: ``{"args": its methods.<method> block, "record": what a result records of it}``."""
    from mubench.api.card import read_yaml

    data = read_yaml(Path(path))
    block = data.get("methods", {}).get(method) if isinstance(data.get("methods"), dict) else None
    if not isinstance(block, dict):
        raise UserError(f"{path}: has no methods.{method} block (a file that `mubench tune --method {method}` writes)")
    study = data.get("study")
    if not isinstance(study, dict) or study.get("method") != method:
        raise UserError(f"{path}: key 'study': expected the study of method '{method}' that chose these values")
    return {"args": block, "record": {"file": Path(path).name, "sha256": sha256_file(Path(path)), "study": study}}


def unlearn(plan: Plan, original) -> tuple[Context, object, Budget, dict | None]:
    """Stage 5: the method on a context around θ₀, seeded with the run seed; returns the context, its report, the budget and LoRA."""
    prepared, card = plan.prepared, plan.prepared.card
    budget = unlearning_budget(plan.budget_setting, plan.method_cls, card, prepared.n_train - len(prepared.forget))
    ctx = prepared.context(original.model, plan.seed, plan.device, plan.precision, budget, plan.config.lora)
    peft = None
    if plan.config.lora is not None:
        ctx.model, peft = apply_lora(original.model, plan.config.lora)
    method = plan.method_cls(ctx, plan.args)
    seed_everything(plan.seed)
    log.info("unlearning: %s on %s/%s, |D_f| = %d (%g%%)", plan.method_cls.name, card.name, prepared.family.name,
             len(ctx.data.forget), prepared.ratio * 100)
    return ctx, method.unlearn(), budget, peft


def execute(plan: Plan) -> tuple[dict, torch.nn.Module, dict]:
    """Stages 2–7 of a resolved run: the result (validated, not yet written), the unlearned model, and the samples
    a generative task made of each model (``{"original": {part: records}, "unlearned": …}``).

    Stages: prepare data → original model → evaluate the original (which does not
    depend on the run seed) → unlearn → evaluate → assemble the result.
    """
    started = time.perf_counter()
    prepared, evaluator = plan.prepared, plan.evaluator
    prepared.load()
    t0 = time.perf_counter()
    original = prepared.original(plan.device, plan.precision)
    original_s = time.perf_counter() - t0
    n_parameters = sum(p.numel() for p in original.model.parameters())

    t0 = time.perf_counter()
    data = prepared.data(plan.device)
    before, original_samples = assess_original(plan, original, data)
    samples = {"original": original_samples, "unlearned": {}}
    eval_s = time.perf_counter() - t0

    ctx, report, budget, peft = unlearn(plan, original)

    t0 = time.perf_counter()
    after = assess(evaluator, ctx.model, data, before, samples["unlearned"])
    eval_s += time.perf_counter() - t0
    times = {"unlearn_s": report.seconds, "eval_s": eval_s, "original_s": original_s, "total_s": time.perf_counter() - started}
    result = assemble(plan, original, before, after, report, budget, peft, times, n_parameters,
                      sum(p.numel() for p in ctx.model.parameters() if p.requires_grad))
    return result, ctx.model, samples


def evaluation_entry(plan: Plan, original) -> CacheEntry:
    """The cache entry of θ₀'s evaluation: keyed by everything its numbers depend on, never by the run seed."""
    prepared, evaluator = plan.prepared, plan.evaluator
    identity = {"card": prepared.card.sha256, "model": prepared.family.spec, "data_sha256": prepared.data_sha256,
                "original": original.fingerprint, "forget_sha256": indices_sha256(prepared.forget),
                "metrics": [m.name for m in evaluator.metrics], "batch_size": evaluator.batch_size, "max_sizes": evaluator.max_sizes,
                "attack_seed": evaluator.seed, "max_samples": evaluator.max_samples, "device": plan.device.type,
                "precision": plan.precision, "mubench_version": __version__}
    return CacheEntry.under(mubench_home() / "evaluations" / prepared.card.name / prepared.family.name, identity,
                            f"cached evaluation of the original model of {prepared.card.name}/{prepared.family.name}", "it is recomputed")


def assess_original(plan: Plan, original, data: UnlearningData) -> tuple[dict, dict]:
    """θ₀'s metrics and attacks (and the samples a generative task made): cached, since every run seed shares them."""
    entry = evaluation_entry(plan, original)
    with entry.locked():
        manifest = entry.read_or_discard()
        if manifest is not None:
            log.info("original model: evaluation cached at %s", entry.folder)
            return read_evaluation(entry.folder, manifest)
        samples = {}
        before = assess(plan.evaluator, original.model, data, samples=samples)
        entry.commit(lambda folder: write_evaluation(folder, before, samples))
    return before, samples


def write_evaluation(folder: Path, metrics: dict, samples: dict) -> dict:
    """Metrics (NaN as null) in the manifest; sample columns of text in it too, arrays (images) in ``samples.npz``."""
    texts, arrays = {}, {}
    for part, columns in samples.items():
        for key, values in columns.items():
            if all(isinstance(v, str) for v in values):
                texts.setdefault(part, {})[key] = list(values)
            else:
                arrays[f"{part}/{key}"] = np.stack([np.asarray(v) for v in values])
    if arrays:
        with open(folder / "samples.npz", "wb") as f:
            np.savez(f, **arrays)
    return {"metrics": finite(metrics), "sample_texts": texts}


def read_evaluation(folder: Path, manifest: dict) -> tuple[dict, dict]:
    """What :func:`write_evaluation` stored: the metrics (null as NaN) and the samples."""
    metrics = {key: math.nan if value is None else value for key, value in manifest["metrics"].items()}
    samples = {part: dict(columns) for part, columns in manifest["sample_texts"].items()}
    if (folder / "samples.npz").is_file():
        with np.load(folder / "samples.npz", allow_pickle=False) as arrays:
            for name in arrays.files:
                part, key = name.split("/", 1)
                samples.setdefault(part, {})[key] = list(arrays[name])
    return metrics, samples


def run(config: RunConfig, registry: Registry | None = None, loaded: dict | None = None) -> tuple[dict, Path]:
    """Unlearn and evaluate as ``config`` says; returns the result and the file it was written to.

    A ``retrain`` run is also cached as the reference of its cell; ``reference:
    retrain`` adds the gaps to that reference (retraining first where none is cached).
    """
    plan = resolve(config, registry or Registry(config.include_paths), loaded)
    if not plan.prepared.classwise:  # its file name is known before any work (a class-wise task's needs the data)
        replaces_same_configuration(config.output_path / planned_filename(plan),
                                    {"config": recorded_config(plan, None), "task_card": {"sha256": plan.prepared.card.sha256}},
                                    before_the_run=True)
    result, model, samples = execute(plan)
    if plan.method_cls.name == "retrain":
        entry = reference_entry(result, plan)
        with entry.locked():
            store_reference(entry, result)
    elif config.reference == "retrain":
        retrained = retrained_reference(result, plan)
        result["reference"] = reference_block(result, retrained, plan.prepared.task.metric)
    return emit(plan, result, model, samples)


def emit(plan: Plan, result: dict, model: torch.nn.Module, samples: dict) -> tuple[dict, Path]:
    """Write the result, validated again with what was added to it: the samples a generative task made (PNG, in a
    folder beside it) and, with ``save_model``, the unlearned weights (their SHA-256 in the result)."""
    path = plan.config.output_path / result_filename(result)
    replaces_same_configuration(path, result)
    if any(samples.values()):
        result["samples"] = save_samples(samples, path.with_suffix(".samples"))
    if plan.config.save_model:
        weights = path.with_suffix(".safetensors")
        with atomic_path(weights) as tmp:
            safetensors.torch.save_model(model, str(tmp))
        result["model_info"]["unlearned_weights"] = {"file": weights.name, "sha256": sha256_file(weights)}
    validate_result(result, "result", plan.prepared.registry, plan.prepared.task)
    write_json(path, result)
    return result, path


def replaces_same_configuration(path: Path, result: dict, before_the_run: bool = False) -> None:
    """Refuse to write over a result of another configuration: one whose ``config`` or task card differs in what the
    file name does not say (device, precision, the arguments a card gives). A rerun of the same configuration replaces
    the file; a file that is not a readable result is replaced too. ``before_the_run``: ``result`` holds only the
    config and card, and LoRA's record (which the file name already says) is not known yet."""
    try:
        earlier = json.loads(path.read_text())
        config, before = result["config"], earlier["config"]
        skipped = {"method_args", "method_args_sources"} | ({"peft"} if before_the_run else set())
        differs = sorted(f"config.{key}" for key in (config.keys() | before.keys()) - skipped
                         if config.get(key) != before.get(key))
        differs += ["config.method_args"] if given_args(result) != given_args(earlier) else []
        differs += ["task_card"] if earlier["task_card"] != result["task_card"] else []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return
    if differs:
        raise UserError(f"{path} holds a result of another configuration (it differs in {', '.join(differs)}); "
                        f"choose another --output-path or remove the file")


def save_samples(samples: dict, folder: Path) -> list[dict]:
    """Images (uint8 arrays) and their prompts as ``<model>_<part>_<k>.png`` in ``folder``, written as one unit; their list."""
    from PIL import Image

    listed = []
    with atomic_folder(folder) as tmp:
        for model, parts in samples.items():
            for part, records in parts.items():
                for k, (image, prompt) in enumerate(zip(records["image"], records["prompt"])):
                    name = f"{model}_{part}_{k}.png"
                    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp / name)
                    listed.append({"file": f"{folder.name}/{name}", "model": model, "part": part, "prompt": prompt})
    return listed


REFERENCE = "result.json"


def reference_entry(result: dict, plan: Plan) -> CacheEntry:
    """The cache entry of the retrained model's result for this cell: keyed by everything its numbers depend on."""
    identity = {"card": result["task_card"]["sha256"], "model": plan.prepared.family.spec, "split": result["split"],
                "seed": plan.seed, "device": plan.device.type, "precision": plan.precision, "peft": result["config"]["peft"],
                "time_budget": plan.budget_setting}
    return CacheEntry.under(mubench_home() / "references" / result["task"] / result["model"], identity,
                            f"cached reference (retrain) of {result['task']}/{result['model']}", "it is recomputed")


def store_reference(entry: CacheEntry, retrained: dict) -> None:
    """Commit a retrain run's result as its cell's reference (the caller holds the entry's lock)."""
    entry.commit(lambda folder: write_json(folder / REFERENCE, retrained) or {})


def retrained_reference(result: dict, plan: Plan, write: bool = True) -> dict:
    """The retrained model's result for this cell: cached, or retrained now (its result written too, unless not
    ``write``) and cached."""
    entry = reference_entry(result, plan)
    with entry.locked():
        if entry.read_or_discard() is None:
            log.info("reference: retraining on D_r with seed %d", plan.seed)
            retrain = resolve(dataclasses.replace(plan.config, method="retrain", method_args={}, reference=None, save_model=False,
                                                  tuned=None), plan.prepared.registry)
            retrained, model, samples = execute(retrain)
            store_reference(entry, retrained)
            if write:
                emit(retrain, retrained, model, samples)
        return read_json(entry.folder / REFERENCE, "cached reference")


def recorded_config(plan: Plan, peft: dict | None) -> dict:
    """The result's ``config``: what the run was asked to do, as resolved (``peft``: the LoRA record, once applied)."""
    args, sources = plan.reported_args
    return ({"deletion_ratio": plan.prepared.ratio, "seed": plan.seed, "method_args": args,
             "protocol": plan.prepared.card.data.get("protocol", "mubench"), "method_args_sources": sources,
             "device": plan.device.type, "precision": plan.precision, "time_budget": plan.budget_setting, "peft": peft}
            | {key: value for key in ("split_seed", "original_seed", "validation") if (value := getattr(plan.config, key)) is not None}
            | ({"tuned": plan.tuned} if plan.tuned else {}))


def assemble(plan: Plan, original, before: dict, after: dict, report, budget: Budget, peft, times: dict,
             n_parameters: int, n_trainable: int) -> dict:
    """Stage 7: the result JSON, validated against the schema."""
    prepared, card = plan.prepared, plan.prepared.card
    result = {
        "schema_version": SCHEMA_VERSION,
        "mubench_version": __version__,
        "task": card.name,
        "method": plan.method_cls.name,
        "model": prepared.family.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": recorded_config(plan, peft),
        "split": {"n_train": prepared.n_train, "n_forget": len(prepared.forget), "n_retain": prepared.n_train - len(prepared.forget),
                  "n_test": prepared.n_test, "forget_sha256": indices_sha256(prepared.forget),
                  "split_seed": card.split_seed, "data_sha256": prepared.data_sha256}
                 | ({"n_shifted": len(prepared.shifted)} if prepared.shifted is not None else {})
                 | ({"forget_classes": [prepared.task.label_names[i] for i in prepared.classes],
                     "n_test_forgotten": len(prepared.forgotten_rows)} if prepared.classwise else {}),
        "method_info": method_info(plan.method_cls),
        "plugins": {"task": prepared.registry.provider("task", card.name),
                    "task_type": prepared.registry.provider("task type", card.task_type),
                    "method": prepared.registry.provider("method", plan.method_cls.name)},
        "metrics": describe(plan.evaluator.metrics),
        "results": {"original": finite(before), "unlearned": finite(after)},
        "times": times,
        "unlearning": {"steps": report.steps, "examples": report.examples, "budget_s": budget.seconds,
                       "budget_examples": budget.examples, "budget_exhausted": report.budget_exhausted, "diverged": report.diverged},
        "model_info": {"architecture": prepared.family.spec["architecture"], "original": original.source,
                       "original_sha256": original.weights_sha256, "train_seed": original.sidecar.get("train_seed"),
                       "n_parameters": n_parameters, "trainable_fraction": n_trainable / n_parameters},
        "task_card": {"sha256": card.sha256},
        "environment": environment(plan.device),
    }
    validate_result(result, "result", prepared.registry, prepared.task)
    return result
