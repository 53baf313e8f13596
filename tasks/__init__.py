"""The built-in tasks, registered as a plugin exactly as a third-party package would be."""
from pathlib import Path

from mubench.api import hookimpl
from mubench.tasks.architectures import small_cnn
from mubench.tasks.audio import AudioClassificationTask
from mubench.tasks.classification import ImageClassificationTask
from mubench.tasks.digits import load_digits
from mubench.tasks.pretrained import Pretrained
from mubench.tasks.text import RelationClassificationTask, TextClassificationTask
from mubench.tasks.video import VideoClassificationTask
from mubench.tasks.vision_language import VisualReasoningTask

TASK_TYPES = [ImageClassificationTask, TextClassificationTask, RelationClassificationTask, VisualReasoningTask,
              AudioClassificationTask, VideoClassificationTask]


@hookimpl
def mubench_task_card_dirs():
    return [Path(__file__).parent]


@hookimpl
def mubench_task_types():
    return TASK_TYPES


@hookimpl
def mubench_dataset_loaders():
    return {"sklearn_digits": load_digits}


@hookimpl
def mubench_architectures():
    return {"small_cnn": small_cnn, "transformers": Pretrained()}
