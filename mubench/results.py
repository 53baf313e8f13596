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
    """``<task>__<model>__<method>__df<percent>__seed<seed>.json``; a rerun replaces its file."""
    config = result["config"]
    return (f"{result['task']}__{result['model']}__{result['method']}"
            f"__df{config['deletion_ratio'] * 100:g}__seed{config['seed']}.json")


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
    return "\n".join(lines)
