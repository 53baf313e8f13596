"""The result JSON: the leaderboard's unit. Assembly helpers, validation, the summary table."""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from mubench import __version__
from mubench.api.card import schema_errors
from mubench.errors import UserError, key_path
from mubench.evaluation import overall_score
from mubench.files import first_problem, read_json

SCHEMA_VERSION = 3
PACKAGES = ("torch", "transformers", "datasets", "numpy", "scikit-learn", "safetensors")


def result_filename(result: dict) -> str:
    """``<task>__<model>__<method>__df<percent>__seed<seed>.json``, with ``__split<N>`` and ``__orig<N>`` for
    ``--split-seed`` and ``--original-seed``, ``__args<hash>`` for method arguments given on the command line, by a
    sweep or a tuned file, ``__lora-r<R>`` (or ``-f<F>``, and ``-a<A>`` for another alpha) for LoRA, and
    ``__budget-<setting>`` for a time budget other than retraining's; a rerun of the same configuration replaces its
    file."""
    config = result["config"]
    peft = config.get("peft")
    return cell_filename(result["task"], result["model"], result["method"], config["deletion_ratio"], config["seed"],
                         result["split"].get("forget_classes"), config.get("split_seed"), config.get("original_seed"),
                         given_args(result),
                         peft and lora_tag(peft["rank"] if peft["requested_fraction"] is None else None,
                                           peft["requested_fraction"], peft["alpha"]),
                         config.get("time_budget", "retrain"))


def lora_tag(rank: int | None, fraction: float | None, alpha: float | None) -> str:
    """``lora-r8``, ``lora-f0.1`` or ``lora-r8-a16``: what a LoRA run's file name says of its adapters."""
    size = f"f{fraction:g}" if fraction is not None else f"r{rank}"
    return f"lora-{size}" + (f"-a{alpha:g}" if alpha is not None and alpha != rank and fraction is None else "")


def given_args(result: dict) -> dict:
    """The method arguments a result's run was given (command line, sweep grid or a tuned file), not those it inherited."""
    return given(result["config"]["method_args"], result["config"]["method_args_sources"])


def given(args: dict, sources: dict) -> dict:
    """The arguments among ``args`` that ``sources`` says were given (see :data:`GIVEN`)."""
    return {key: value for key, value in args.items() if sources.get(key) in GIVEN}


ULIRA_SUFFIX = ".ulira.json"  # a U-LiRA result (mubench/schemas/ulira.schema.json), not a run
GIVEN = ("command line", "tuned")  # the sources of method arguments that make a run another configuration


def cell_filename(task: str, model: str, method: str, ratio: float, seed: int, classes: list | None = None,
                  split_seed: int | None = None, original_seed: int | None = None, given_args: dict | None = None,
                  lora: str | None = None, time_budget: str | float = "retrain") -> str:
    """The result file name of one configuration (see :func:`result_filename`)."""
    deleted = f"classes-{'+'.join(classes)}" if classes else f"df{ratio * 100:g}"
    varied = "".join(f"__{tag}{value}" for tag, value in (("split", split_seed), ("orig", original_seed)) if value is not None)
    if given_args:
        varied += f"__args{hashlib.sha256(json.dumps(given_args, sort_keys=True).encode()).hexdigest()[:8]}"
    if lora:
        varied += f"__{lora}"
    if time_budget != "retrain":
        varied += f"__budget-{time_budget if isinstance(time_budget, str) else f'{time_budget:g}s'}"
    return f"{task}__{model}__{method}__{deleted}__seed{seed}{varied}.json"


def git_hash() -> str | None:
    """The commit of the mubench source tree, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Versions and hardware, so that a result can be reproduced."""
    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mubench": __version__,
        "mubench_git": git_hash(),
        **{name: installed(name) for name in PACKAGES},
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector kernels torch picked: they set the last bits
    }


def finite(metrics: dict) -> dict:
    """Metrics with NaN (an attack with too few examples) written as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def load_result(path: Path) -> dict:
    """A result file, read defensively (size, nesting, encoding and non-finite numbers checked before anything else)."""
    return read_json(path, "result")


CLOSE = 1e-9  # recomputed numbers match what a result says to this (absolute)


def validate_result(result: dict, source, registry, task=None) -> None:
    """Check that a result means what it says; the first failed check is a one-line :class:`UserError` naming its key.

    Shape (the shipped JSON Schema), then meaning: every number finite; the date a
    date in the past; times adding up; the split's counts; the card hash, model and
    split seed of the task's card in ``registry``; each metric known to this mubench,
    described as it is and inside its bounds; the unlearning budget the card gives;
    the 'original' baseline unchanged; the overall score and the gaps to the reference
    recomputed. ``task``, a task type prepared on the task's data, also lets an
    accuracy task's overall score be recomputed (it needs the number of classes).
    """
    def fail(key: tuple, problem: str):
        raise UserError(f"{source}: {key_path(key)}: {problem}")

    problem = first_problem(result)
    if problem:
        fail(*problem)
    schema_errors(result, "result", source)
    try:
        date = datetime.datetime.fromisoformat(result["date"])
    except ValueError:
        fail(("date",), f"{result['date']!r} is not an ISO 8601 date and time")
    if date.tzinfo is None or date > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1):
        fail(("date",), f"{result['date']} has no time zone or lies in the future")
    times = result["times"]
    if times["unlearn_s"] + times["eval_s"] + times["original_s"] > times["total_s"] + 1e-3:
        fail(("times", "total_s"), "is less than unlearn_s + eval_s + original_s")
    split, config = result["split"], result["config"]
    if split["n_forget"] + split["n_retain"] != split["n_train"]:
        fail(("split",), "n_forget + n_retain must equal n_train")
    if config.get("split_seed", split["split_seed"]) != split["split_seed"]:
        fail(("config", "split_seed"), "differs from split.split_seed")

    try:
        card = registry.card(result["task"]).with_seeds(config.get("split_seed"), config.get("original_seed"))
    except UserError as e:
        fail(("task",), str(e))
    try:
        method = registry.method(result["method"])
    except UserError as e:
        fail(("method",), str(e))
    if result["task_card"]["sha256"] != card.sha256:
        fail(("task_card", "sha256"), f"is not the hash of task '{card.name}''s card {card.path} (made with another version of it?)")
    if result["model"] not in card.models:
        fail(("model",), f"'{result['model']}' is not a model of task '{card.name}' ({', '.join(card.models)})")
    if result["model_info"]["architecture"] != card.models[result["model"]]["architecture"]:
        fail(("model_info", "architecture"), f"is not the architecture of model '{result['model']}' in the card")
    if config["protocol"] != card.data.get("protocol", "mubench"):
        fail(("config", "protocol"), "is not the card's protocol")

    described = result["metrics"]
    if set(described) != set(card.data["metrics"]):
        fail(("metrics",), f"describes {', '.join(sorted(described))}; the card's metrics are {', '.join(card.data['metrics'])}")
    for name, description in described.items():
        metric = registry.metrics.get(name)
        if metric is None:
            fail(("metrics", name), f"metric '{name}' is not known to this mubench (is its plugin installed?)")
        if description != metric.describe():
            fail(("metrics", name), "differs from the metric's own description")
    for block, values in result["results"].items():
        for key, value in values.items():
            if key == "overall_score":
                continue
            part, name = key.split("_", 1)
            metric = registry.metrics.get(name)
            if name not in described:
                fail(("results", block, key), f"metric '{name}' is not described in 'metrics'")
            if metric.scope == "forget" and part != "forget":
                fail(("results", block, key), f"'{name}' is an attack on D_f: only forget_{name} exists")
            low, high = metric.bounds
            if value is not None and not (low <= value and (high is None or value <= high)):
                fail(("results", block, key), f"{value} lies outside {name}'s range [{low}, {'inf' if high is None else high}]")
    if result["method"] == "original" and result["results"]["original"] != result["results"]["unlearned"]:
        fail(("results",), "the 'original' method must leave the model's metrics unchanged")

    if result["method_info"] != method_info(method):
        fail(("method_info",), f"is not what method '{method.name}' declares ({method_info(method)})")

    budget = result["unlearning"]["budget_examples"]
    if config["time_budget"] == "retrain":
        expected = int(card.data["train"].get("epochs", 1)) * split["n_retain"] if method.time_limited else None
        if budget != expected:
            fail(("unlearning", "budget_examples"), f"is {budget}; the card's retraining budget is {expected}")
    kind = task or registry.task_type(card)
    if task is not None or kind.overall == "generation":  # an accuracy score needs the task's chance level: its data
        check_overall(result, kind, fail)
    if "reference" in result:
        check_reference(result, kind.metric, fail)


def method_info(method) -> dict:
    """What a result records of its method: its place in MU-Bench's taxonomy (null where the method declares none)."""
    return {"taxonomy": method.taxonomy.as_dict() if method.taxonomy is not None else None}


def check_overall(result: dict, task, fail) -> None:
    """The overall score of each block, recomputed from the block's metrics."""
    blocks = {name: {k: math.nan if v is None else v for k, v in block.items()} for name, block in result["results"].items()}
    for name, block in blocks.items():
        expected = overall_score(task, block, blocks["original"])
        if not math.isclose(block["overall_score"], expected, abs_tol=CLOSE):
            fail(("results", name, "overall_score"), f"is {block['overall_score']}; its metrics give {expected}")


def check_reference(result: dict, metric: str, fail) -> None:
    """The gaps to the retrained model, Deep Unlearn's score and the efficiency, recomputed from the numbers they come from."""
    reference = result["reference"]
    retrained = {"results": {"unlearned": reference["metrics"]}, "times": {"unlearn_s": reference["unlearn_s"]}}
    expected = reference_block(result, retrained, metric)

    def agrees(ours, theirs) -> bool:
        if isinstance(ours, dict):  # the gaps, key by key
            return ours.keys() == theirs.keys() and all(math.isclose(ours[k], theirs[k], abs_tol=CLOSE) for k in ours)
        if isinstance(ours, float):
            return isinstance(theirs, float) and math.isclose(ours, theirs, abs_tol=CLOSE)
        return ours == theirs

    for key in ("gap", "deep_unlearn_score", "efficiency"):
        if not agrees(reference[key], expected[key]):
            fail(("reference", key), "does not follow from the reference's metrics and the result's own")


def reference_block(result: dict, retrained: dict, metric: str) -> dict:
    """The gap of each metric to the retrained model, Deep Unlearn's objective and the efficiency t_retrain / t_method.

    Deep Unlearn's objective is the mean of the gaps in the primary metric on D_r, D_f
    and D_test, plus 1 − the loss attack's indiscernibility (lower is better).
    """
    ours, theirs = result["results"]["unlearned"], retrained["results"]["unlearned"]
    gap = {key: abs(value - theirs[key]) for key, value in ours.items()
           if isinstance(value, (int, float)) and isinstance(theirs.get(key), (int, float))}
    parts = [gap.get(f"{part}_{metric}") for part in ("retain", "forget", "test")]
    indiscernibility = ours.get("forget_mia_loss_indiscernibility")
    objective = None
    if None not in parts and indiscernibility is not None:
        objective = sum(parts) / 3 + (1 - indiscernibility)
    seconds = result["times"]["unlearn_s"]
    return {"method": "retrain", "metrics": theirs, "unlearn_s": retrained["times"]["unlearn_s"], "gap": gap,
            "deep_unlearn_score": objective, "efficiency": retrained["times"]["unlearn_s"] / seconds if seconds > 0 else None}


def direction(result: dict, key: str) -> str:
    """`` ↑``/`` ↓`` for a metric where higher/lower is better (on D_f, what forgetting moves it towards)."""
    if key == "overall_score":
        return "  ↑"
    part, name = key.split("_", 1)
    meaning = result["metrics"].get(name, {})
    if part == "forget":
        return {"lower": "  ↓", "higher": "  ↑", "chance": "  → chance", "retrain": "  → retrain"}.get(meaning.get("forgotten"), "")
    return "  ↑" if meaning.get("higher_is_better") else "  ↓"


def mean_ci(values: list) -> tuple[float, float] | None:
    """Mean and the half-width of its 95% confidence interval (Student's t), over the finite values; None for none."""
    from scipy import stats

    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def seeds_table(results: list[dict]) -> str:
    """Mean ± 95% CI per metric of the original and the unlearned model over runs that differ only in their seed (and θ₀'s)."""
    first = results[0]
    keys = list(first["results"]["original"]) + ["unlearn_s"]
    width = max(len(k) for k in keys) + 4
    originals = any("original_seed" in r["config"] for r in results)
    seeds = ", ".join(f"{r['config'].get('original_seed', '-')}/{r['config']['seed']}" if originals else str(r["config"]["seed"])
                      for r in results)
    lines = [f"{first['task']} / {first['model']} / {first['method']}  (D_f {first['split']['n_forget']} of "
             f"{first['split']['n_train']}; {'θ₀ seed/run seed' if originals else 'seeds'} {seeds}; mean ± 95% CI)",
             f"{'metric':<{width}}  {'original':>17}  {'unlearned':>17}"]

    def cell(values):
        summary = mean_ci(values)
        return f"{'n/a':>17}" if summary is None else f"{number(summary[0], 8)} ± {number(summary[1], 6)}"

    for key in keys:
        if key == "unlearn_s":
            row = [f"{'':>17}", cell([r["times"]["unlearn_s"] for r in results])]
        else:
            row = [cell([r["results"][block].get(key) for r in results]) for block in ("original", "unlearned")]
        lines.append(f"{key:<{width}}  " + "  ".join(row))
    if all("reference" in r for r in results):
        lines.append("against the retrained model:")
        for key in ("deep_unlearn_score", "efficiency"):
            lines.append(f"{key:<{width}}  {'':>17}  " + cell([r["reference"][key] for r in results]))
        for key in first["reference"]["gap"]:
            lines.append(f"{'gap ' + key:<{width}}  {'':>17}  " + cell([r["reference"]["gap"].get(key) for r in results]))
    for what in ("budget_exhausted", "diverged"):
        count = sum(r["unlearning"][what] for r in results)
        if count:
            lines.append(f"{'budget: hit' if what == 'budget_exhausted' else 'diverged'} in {count} of {len(results)} runs")
    return "\n".join(lines)


def number(value: float | None, width: int = 9) -> str:
    """A metric for a table, right-aligned: four decimals below 10, two below 10,000, else a whole number with thousands
    separators (the JSON keeps full precision); ``n/a`` for none."""
    if value is None:
        return f"{'n/a':>{width}}"
    size = abs(value)
    text = f"{value:.4f}" if size < 10 else f"{value:.2f}" if size < 1e4 else f"{value:,.0f}"
    return f"{text:>{width}}"


def summary_table(result: dict) -> str:
    """A short table of the metrics of the original and the unlearned model, then how unlearning ended."""
    original, unlearned = result["results"]["original"], result["results"]["unlearned"]
    width = max(len(k) for k in original)
    lines = [f"{result['task']} / {result['model']} / {result['method']}  "
             f"(D_f {result['split']['n_forget']} of {result['split']['n_train']}, seed {result['config']['seed']})",
             f"{'metric':<{width}}  {'original':>9}  {'unlearned':>9}"]
    for key in original:
        lines.append(f"{key:<{width}}  {number(original[key])}  {number(unlearned.get(key))}" + direction(result, key))
    lines.append(f"{'unlearn_s':<{width}}  {'':>9}  {result['times']['unlearn_s']:9.2f}")
    reference = result.get("reference")
    if reference:
        metrics = reference["metrics"]
        lines.append("against the retrained model (retrain's value, gap):")
        for key, gap in reference["gap"].items():
            lines.append(f"{key:<{width}}  {number(metrics[key])}  {number(gap)}")
        for key in ("deep_unlearn_score", "efficiency"):
            lines.append(f"{key:<{width}}  {'':>9}  {number(reference[key])}")
    lines += ending(result)
    return "\n".join(lines)


def ending(result: dict) -> list[str]:
    """Lines on how unlearning stopped, where it did not simply run its epochs: the budget it hit, or divergence."""
    done = result["unlearning"]
    lines = []
    if done["budget_exhausted"]:
        limit = (f"{done['budget_examples']:,} examples (what retraining processes)" if done["budget_examples"] is not None
                 else f"{done['budget_s']:g} s")
        lines.append(f"budget: hit after {done['steps']:,} steps and {done['examples']:,} examples; the limit was {limit}")
    if done["diverged"]:
        lines.append("diverged: the loss became infinite or NaN; unlearning stopped there")
    return lines


def validate_ulira(result: dict, source) -> None:
    """A U-LiRA result's shape (the shipped schema) and the numbers that must agree: the score is the mean of the shadows' scores."""
    schema_errors(result, "ulira", source)
    scores = [s for s in result["ulira"]["per_shadow"] if s is not None]
    mean = result["ulira"]["balanced_accuracy"]["mean"]
    if len(result["shadows"]) != result["config"]["shadows"] or len(result["ulira"]["per_shadow"]) != result["config"]["shadows"]:
        raise UserError(f"{source}: key 'shadows': expected one entry per shadow ({result['config']['shadows']})")
    if scores and (mean is None or abs(mean - sum(scores) / len(scores)) > 1e-9):
        raise UserError(f"{source}: key 'ulira.balanced_accuracy.mean': is not the mean of ulira.per_shadow")
