"""The built-in tasks, registered as a plugin exactly as a third-party package would be."""
from pathlib import Path

from mubench.api import hookimpl
from mubench.tasks.architectures import mlp, resnet18, small_cnn, tiny_vit
from mubench.tasks.audio import AudioClassificationTask
from mubench.tasks.biofact import load_people
from mubench.tasks.classification import ImageClassificationTask
from mubench.tasks.ddi2013 import load_ddi_xml
from mubench.tasks.diffusion import StableDiffusion, TextToImageTask
from mubench.tasks.digits import load_digits
from mubench.tasks.generation import CausalGenerationTask, Seq2SeqGenerationTask
from mubench.tasks.nlvr2 import load_nlvr2_release
from mubench.tasks.pretrained import Pretrained
from mubench.tasks.speech_commands import one_second_silence
from mubench.tasks.tabular import TabularClassificationTask, load_sklearn_table
from mubench.tasks.text import RelationClassificationTask, TextClassificationTask
from mubench.tasks.ucf101 import frames_to_clips
from mubench.tasks.utkface import age_groups
from mubench.tasks.video import VideoClassificationTask
from mubench.tasks.vision_language import VisualReasoningTask

TASK_TYPES = [ImageClassificationTask, TextClassificationTask, RelationClassificationTask, VisualReasoningTask,
              AudioClassificationTask, VideoClassificationTask, Seq2SeqGenerationTask, CausalGenerationTask, TextToImageTask,
              TabularClassificationTask]


@hookimpl
def mubench_task_card_dirs():
    return [Path(__file__).parent]


@hookimpl
def mubench_task_types():
    return TASK_TYPES


@hookimpl
def mubench_dataset_loaders():
    return {"sklearn_digits": load_digits, "ddi2013_xml": load_ddi_xml, "nlvr2_release": load_nlvr2_release,
            "biofact_people": load_people, "sklearn_tabular": load_sklearn_table}


@hookimpl
def mubench_dataset_adapters():
    return {"ucf101_clips": frames_to_clips, "speech_commands_silence": one_second_silence, "utkface_age_groups": age_groups}


@hookimpl
def mubench_architectures():
    return {"small_cnn": small_cnn, "mlp": mlp, "resnet18": resnet18, "tiny_vit": tiny_vit, "transformers": Pretrained(),
            "stable_diffusion": StableDiffusion()}
