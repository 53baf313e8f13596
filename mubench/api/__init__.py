"""The API that plugins build on: task types, methods, cards, metrics and the hook marker.

Names are imported on first use (``from mubench.api import Method`` imports torch then), so that reading cards and
listing what plugins give (``mubench list``, ``mubench validate``) starts without torch.
"""
import importlib

import pluggy

hookimpl = pluggy.HookimplMarker("mubench")

WHERE = {
    "TaskCard": "mubench.api.card", "load_card": "mubench.api.card",
    "TRAINING_SPACE": "mubench.api.method", "Choice": "mubench.api.method", "Context": "mubench.api.method",
    "Fit": "mubench.api.method", "Method": "mubench.api.method", "Pass": "mubench.api.method", "Range": "mubench.api.method",
    "Taxonomy": "mubench.api.method", "output_problem": "mubench.api.method",
    "Metric": "mubench.api.metric", "TaskType": "mubench.api.task",
    "ArrowExamples": "mubench.data", "Batch": "mubench.data", "TensorExamples": "mubench.data",
    "LoopReport": "mubench.loop", "autocast": "mubench.loop",
}

__all__ = sorted([*WHERE, "hookimpl"])


def __getattr__(name: str):
    if name not in WHERE:
        raise AttributeError(f"module 'mubench.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
