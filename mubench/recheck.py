"""Re-checking a result with this mubench: its deletion set and data (``validate``) and its numbers (``verify``).

``validate`` recomputes what a result's claims follow from without any model: the
deletion set this mubench draws for the task, ratio and split seed (its size and
SHA-256), the training data's fingerprint and, with the task's classes known, the
overall score. ``verify`` re-evaluates the unlearned weights that ``run
--save-model`` kept, on that deletion set, and compares every metric.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mubench.api.card import schema_errors
from mubench.errors import UserError, key_path
from mubench.evaluation import Evaluator, assess
from mubench.files import sha256_file
from mubench.harness import Prepared
from mubench.loop import resolve_device, resolve_precision
from mubench.lora import LoraSpec, apply_lora
from mubench.originals import load_weights
from mubench.results import load_result, validate_result
from mubench.splits import indices_sha256


def prepared_for(result: dict, registry, data_dir: Path | None, source) -> Prepared:
    """The task as the result's run prepared it: model family, deletion ratio, split and original seeds."""
    config = result["config"]
    classwise = "forget_classes" in result["split"]
    try:
        return Prepared(registry, result["task"], result["model"], None if classwise else config["deletion_ratio"], data_dir,
                        "train" if "original_seed" in config else None, config.get("split_seed"), config.get("original_seed"))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def check_split(result: dict, prepared: Prepared, source) -> None:
    """The result's split against the one this mubench draws: data fingerprint, sizes, D_f's SHA-256 and classes."""
    split = result["split"]
    drawn = {"data_sha256": prepared.data_sha256, "n_train": prepared.n_train, "n_test": prepared.n_test,
             "n_forget": len(prepared.forget), "forget_sha256": indices_sha256(prepared.forget)}
    if prepared.classwise:
        drawn["forget_classes"] = [prepared.task.label_names[i] for i in prepared.classes]
    for key, value in drawn.items():
        if split.get(key) != value:
            what = "the training data" if key == "data_sha256" else "the deletion set this mubench draws for the task"
            raise UserError(f"{source}: {key_path(('split', key))}: differs from {what} ({value})")
    if not math.isclose(result["config"]["deletion_ratio"], prepared.ratio):
        raise UserError(f"{source}: {key_path(('config', 'deletion_ratio'))}: differs from the deletion set's ratio {prepared.ratio}")


def recheck(path: Path, registry, read_data: bool = True, data_dir: Path | None = None, drawn: dict | None = None) -> str:
    """Validate a result file (see :func:`mubench.results.validate_result`) and re-draw its deletion set.

    Returns what could not be re-checked ('' when everything was): with
    ``read_data`` off, or when the task's data cannot be read here, the deletion set,
    the data fingerprint and an accuracy task's overall score. ``drawn`` keeps the
    deletion sets drawn for earlier files (many files, one task: it is read once per
    deletion set).
    """
    result = load_result(path)
    skipped = "the deletion set, the data and the overall score"
    if not read_data:
        validate_result(result, path, registry)
        return f"{skipped} (--no-data)"
    schema_errors(result, "result", path)  # the fields the split is drawn from are there
    config = result["config"]
    key = (result["task"], result["model"], config["deletion_ratio"], config.get("split_seed"), config.get("original_seed"), data_dir)
    prepared = (drawn or {}).get(key)
    if prepared is None:
        prepared = prepared_for(result, registry, data_dir, path)
        try:
            prepared.read()
        except UserError as e:
            validate_result(result, path, registry)
            return f"{skipped} (the task's data cannot be read here: {e})"
        if drawn is not None:
            drawn[key] = prepared
    check_split(result, prepared, path)
    validate_result(result, path, registry, prepared.task)
    return ""


@dataclass
class Verification:
    """What ``verify`` compared: the metric keys, those off by more than the tolerance, and a printable table."""

    compared: list[str]
    mismatched: list[str]
    table: str


def verify(path: Path, registry, tolerance: float = 1e-6, device: str = "cpu", data_dir: Path | None = None) -> Verification:
    """Re-evaluate a result's saved unlearned weights on its deletion set and compare every metric it reports.

    The weights must match the SHA-256 the result records; the overall score is
    recomputed against the result's own original block (θ₀ is not re-evaluated).
    """
    result = load_result(path)
    validate_result(result, path, registry)
    saved = result["model_info"].get("unlearned_weights")
    if saved is None:
        raise UserError(f"{path}: has no saved weights to verify (run it with --save-model)")
    weights = Path(path).parent / saved["file"]
    if not weights.is_file():
        raise UserError(f"{path}: its weights {weights} are missing")
    if sha256_file(weights) != saved["sha256"]:
        raise UserError(f"{weights}: does not match the SHA-256 that {path} records (edited or corrupted)")
    prepared = prepared_for(result, registry, data_dir, path)
    prepared.load()
    check_split(result, prepared, path)
    validate_result(result, path, registry, prepared.task)

    model = prepared.family.build()
    peft = result["config"]["peft"]
    if peft is not None:
        model, _ = apply_lora(model, LoraSpec(rank=peft["rank"], alpha=peft["alpha"], dropout=peft["dropout"]))
    load_weights(model, weights, prepared.family)  # hashed above
    target = resolve_device(device)
    model.to(target)
    evaluator = Evaluator.for_card(prepared.card, prepared.task, prepared.metrics, target,
                                   resolve_precision(result["config"]["precision"], target))
    original = {k: math.nan if v is None else v for k, v in result["results"]["original"].items()}
    values = assess(evaluator, model, prepared.data(target), original)

    claimed = result["results"]["unlearned"]
    width = max(map(len, claimed))
    lines = [f"{'metric':<{width}}  {'claimed':>10}  {'re-evaluated':>12}  {'difference':>10}"]
    mismatched = []
    for key, value in claimed.items():
        again = values.get(key)
        again = None if again is None or (isinstance(again, float) and math.isnan(again)) else again
        if value is None or again is None:
            differs = (value is None) != (again is None)
            lines.append(f"{key:<{width}}  {value!s:>10}  {again!s:>12}  {'-':>10}")
        else:
            differs = abs(value - again) > tolerance
            lines.append(f"{key:<{width}}  {value:10.6f}  {again:12.6f}  {abs(value - again):10.2e}")
        if differs:
            mismatched.append(key)
    return Verification(list(claimed), mismatched, "\n".join(lines))
