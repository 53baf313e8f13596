"""The API that plugins build on: task types, methods, cards, metrics and the hook marker."""
import pluggy

from mubench.api.card import TaskCard, load_card
from mubench.api.method import TRAINING_SPACE, Choice, Context, Fit, Method, Pass, Range, Taxonomy, output_problem
from mubench.api.metric import Metric
from mubench.api.task import TaskType
from mubench.data import ArrowExamples, Batch, TensorExamples
from mubench.loop import LoopReport, autocast

hookimpl = pluggy.HookimplMarker("mubench")

__all__ = ["TRAINING_SPACE", "ArrowExamples", "Batch", "Choice", "Context", "Fit", "LoopReport", "Method", "Metric", "Pass",
           "Range", "TaskCard", "TaskType", "Taxonomy", "TensorExamples", "autocast", "hookimpl", "load_card", "output_problem"]
