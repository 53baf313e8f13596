"""Architecture ``transformers``: a Hugging Face model by hub id or local folder, with a head for the task.

Card params: ``pretrained`` (the backbone θ₀ is fine-tuned from), optionally
``model_class`` (a transformers class name, when the task type's Auto class does not
fit, e.g. ``ViltForImagesAndTextClassification``), ``processor`` (read by the task
type; default: ``pretrained``) and any config overrides (e.g. ``num_frames``).
"""
from __future__ import annotations

import torch

from mubench.errors import UserError

TASK_KEYS = ("processor", "prompt_format")  # params the task type reads, not the model
HEAD_KEYS = ("num_labels", "id2label", "label2id")  # what a config takes from the task's model_kwargs()


def resolve_class(task, name: str | None):
    """The transformers class ``name``, or the task type's Auto class."""
    import transformers

    name = name or task.auto_class
    cls = getattr(transformers, name, None)
    if cls is None:
        raise UserError(f"transformers has no class '{name}' (card model param 'model_class')")
    return cls


def head_kwargs(task) -> dict:
    """The head settings among the task's ``model_kwargs()`` (none for a task whose model has no class head)."""
    return {key: value for key, value in task.model_kwargs().items() if key in HEAD_KEYS}


def load_processor(class_name: str, params: dict):
    """A family's processor (tokenizer, image processor, feature extractor …) of transformers class ``class_name``.

    It loads from the family's ``processor`` param, else its ``pretrained`` backbone;
    returns the processor (None without a class or a source) and that source.
    """
    source = params.get("processor") or params.get("pretrained")
    if not class_name or not source:
        return None, source
    import transformers

    return from_hub(getattr(transformers, class_name).from_pretrained, source), source


def from_hub(load, source: str, **kwargs):
    """``load(source, **kwargs)``, with a failed download or a bad folder as one line.

    transformers' load report (the new head's weights are "missing", as they should
    be) is silenced for the call.
    """
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return load(source, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load '{source}' from the Hugging Face hub or disk: {str(e).splitlines()[0]}") from None
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def label_space_problem(config, head: dict) -> str | None:
    """Why a checkpoint's head (``num_labels``, ``id2label``) does not predict the task's (:func:`head_kwargs`), or None."""
    if "num_labels" not in head:
        return None
    names = [head["id2label"][i] for i in range(head["num_labels"])]
    if config.num_labels != len(names):
        return f"it predicts {config.num_labels} labels, the task has {len(names)}"
    given = [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(given)):
        return None
    if [name.lower() for name in given] != [name.lower() for name in names]:
        return f"its labels are {given}, the task's are {names}"
    return None


class Pretrained:
    """Builds, loads and sizes transformers models for a card's model family."""

    def __call__(self, task, pretrained: str, model_class: str | None = None, **params) -> torch.nn.Module:
        """The pretrained backbone with a freshly initialised head for the task's labels."""
        config = {k: v for k, v in params.items() if k not in TASK_KEYS}
        cls = resolve_class(task, model_class)
        return from_hub(cls.from_pretrained, pretrained, ignore_mismatched_sizes=True, **head_kwargs(task), **config)

    def load_original(self, task, source: str, pretrained: str | None = None, model_class: str | None = None,
                      **params) -> torch.nn.Module:
        """A published model already fine-tuned on the task; its label space must be the task's.

        The number of labels must match, and so must their names in order where the
        checkpoint's config names them (``LABEL_0``… names nothing).
        """
        cls = resolve_class(task, model_class)
        model = from_hub(cls.from_pretrained, source)
        problem = label_space_problem(model.config, head_kwargs(task))
        if problem:
            raise UserError(f"original '{source}' does not fit task '{task.card.name}': {problem}")
        return model

    def skeleton(self, task, pretrained: str, model_class: str | None = None, **params) -> torch.nn.Module:
        """The model with the task's head, built from its config alone on the meta device (no weights)."""
        from transformers import AutoConfig

        config_overrides = {k: v for k, v in params.items() if k not in TASK_KEYS}
        config = from_hub(AutoConfig.from_pretrained, pretrained, **head_kwargs(task), **config_overrides)
        cls = resolve_class(task, model_class)
        with torch.device("meta"):
            return cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)
