"""The API that plugins build on: task types, methods, cards, metrics and the hook marker."""
import pluggy

from mubench.api.card import TaskCard, load_card
from mubench.api.method import Context, Fit, Method, Pass
from mubench.api.task import ArrowExamples, TaskType, TensorExamples
from mubench.data import Batch

hookimpl = pluggy.HookimplMarker("mubench")

__all__ = ["ArrowExamples", "Batch", "Context", "Fit", "Method", "Pass", "TaskCard", "TaskType", "TensorExamples", "hookimpl", "load_card"]
