"""The result JSON: the leaderboard's unit. Assembly helpers, validation, the summary table."""
from __future__ import annotations

import json
import math
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from mubench import __version__
from mubench.api.card import schema_errors
from mubench.errors import UserError

SCHEMA_VERSION = 2
PACKAGES = ("torch", "transformers", "datasets", "numpy", "scikit-learn", "safetensors")


def result_filename(result: dict) -> str:
    """``<task>__<model>__<method>__df<percent>__seed<seed>.json`` (with ``__split<N>``, ``__orig<N>`` for
    ``--split-seed``, ``--original-seed``); a rerun replaces its file."""
    config = result["config"]
    varied = "".join(f"__{tag}{config[key]}" for key, tag in (("split_seed", "split"), ("original_seed", "orig")) if key in config)
    classes = result["split"].get("forget_classes")
    deleted = f"classes-{'+'.join(classes)}" if classes else f"df{config['deletion_ratio'] * 100:g}"
    return f"{result['task']}__{result['model']}__{result['method']}__{deleted}__seed{config['seed']}{varied}.json"


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
    }


def finite(metrics: dict) -> dict:
    """Metrics with NaN (an attack with too few examples) written as null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def load_result(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None


def validate_result(result: dict, source) -> None:
    """Check a result against the shipped JSON Schema and its own consistency."""
    schema_errors(result, "result", source)
    split = result["split"]
    if split["n_forget"] + split["n_retain"] != split["n_train"]:
        raise UserError(f"{source}: key 'split': n_forget + n_retain must equal n_train")
    if result["method"] == "original" and result["results"]["original"] != result["results"]["unlearned"]:
        raise UserError(f"{source}: key 'results': the 'original' method must leave the model's metrics unchanged")
    described = result["metrics"]
    for block, values in result["results"].items():
        for key in values:
            if key != "overall_score" and key.split("_", 1)[1] not in described:
                raise UserError(f"{source}: key 'results.{block}.{key}': metric '{key.split('_', 1)[1]}' is not described in 'metrics'")


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
    """Mean ± 95% CI per metric of the original and the unlearned model over runs that differ only in their seed."""
    first = results[0]
    keys = list(first["results"]["original"]) + ["unlearn_s"]
    width = max(len(k) for k in keys) + 4
    seeds = ", ".join(str(r["config"]["seed"]) for r in results)
    lines = [f"{first['task']} / {first['model']} / {first['method']}  (D_f {first['split']['n_forget']} of "
             f"{first['split']['n_train']}; seeds {seeds}; mean ± 95% CI)",
             f"{'metric':<{width}}  {'original':>17}  {'unlearned':>17}"]

    def cell(values):
        summary = mean_ci(values)
        return f"{'n/a':>17}" if summary is None else f"{summary[0]:8.4f} ± {summary[1]:6.4f}"

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
    return "\n".join(lines)


def summary_table(result: dict) -> str:
    """A short table of the metrics of the original and the unlearned model."""
    original, unlearned = result["results"]["original"], result["results"]["unlearned"]
    width = max(len(k) for k in original)
    lines = [f"{result['task']} / {result['model']} / {result['method']}  "
             f"(D_f {result['split']['n_forget']} of {result['split']['n_train']}, seed {result['config']['seed']})",
             f"{'metric':<{width}}  {'original':>9}  {'unlearned':>9}"]
    for key in original:
        row = [original[key], unlearned.get(key)]
        lines.append(f"{key:<{width}}  " + "  ".join("      n/a" if v is None else f"{v:9.4f}" for v in row) + direction(result, key))
    times = result["times"]
    lines.append(f"{'unlearn_s':<{width}}  {'':>9}  {times['unlearn_s']:9.2f}")
    reference = result.get("reference")
    if reference:
        metrics = reference["metrics"]
        lines.append("against the retrained model (retrain's value, gap):")
        for key, gap in reference["gap"].items():
            lines.append(f"{key:<{width}}  {metrics[key]:9.4f}  {gap:9.4f}")
        for key in ("deep_unlearn_score", "efficiency"):
            value = reference[key]
            lines.append(f"{key:<{width}}  {'':>9}  " + ("      n/a" if value is None else f"{value:9.4f}"))
    return "\n".join(lines)
