"""Every hook a mubench plugin can implement.

A plugin is a module (or object) named by an entry point in group ``mubench``; the
built-in tasks (``mubench.tasks``) and methods (``mubench.methods``) are registered that
way too. Each hook takes no arguments and returns a list (or mapping) that the registry merges over all
plugins. Names are letters, digits, ``_``, ``.`` and ``-`` (they become parts of file
names), checked as they register. A plugin that fails to import, or whose hook
raises, is named in one warning line and left out; a name given by two plugins is
used by neither, and asking for it is an error that names both.

    from mubench.api import hookimpl

    @hookimpl
    def mubench_methods() -> list[type[Method]]:
        return [MyMethod]
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # only for the annotations: reading the hooks imports nothing heavy
    from datasets import DatasetDict
    from torch import nn

    from mubench.api import Method, Metric, TaskType

hookspec = pluggy.HookspecMarker("mubench")


@hookspec
def mubench_task_card_dirs() -> list[Path]:
    """Folders of YAML task cards (``*.yaml``) this plugin contributes.

    Returns a list of paths. Every card found is validated against the card schema.
    """


@hookspec
def mubench_task_types() -> list[type[TaskType]]:
    """Task types (subclasses of :class:`mubench.api.TaskType`) this plugin contributes.

    A card names its type by ``task_type``; the type brings data encoding, collation,
    forward pass, loss, distillation and the per-example evaluation records
    (``evaluate_batch``) that metrics read. Returns a list of classes, keyed by their ``name``.
    """


@hookspec
def mubench_dataset_loaders() -> dict[str, Callable[[dict], DatasetDict]]:
    """Dataset sources other than ``datasets``, for cards whose ``dataset`` says ``loader: NAME``.

    Returns a mapping of name to a callable ``(spec) -> DatasetDict``, where ``spec`` is the
    card's ``dataset`` section as a dict (its ``options`` among it); the DatasetDict holds the
    card's ``train`` and ``test`` splits with the columns ``dataset.columns`` names (built-in
    data such as scikit-learn's, or a release layout that ``datasets`` cannot read). A
    callable with an ``options_schema`` attribute (a JSON Schema) has the card's
    ``dataset.options`` checked against it. With ``--data-dir`` the section's ``path`` is that folder, and the
    loader is called only if it has the attribute ``reads_data_dir = True``;
    otherwise ``datasets`` reads the folder. ``mubench.data.read_source(section)``
    reads a ``datasets`` source for loaders that build on one.
    """


@hookspec
def mubench_dataset_adapters() -> dict[str, Callable[[DatasetDict, dict], DatasetDict]]:
    """Adapters from a source's schema to the task's examples, for cards whose ``dataset`` says ``adapter: NAME``.

    Returns a mapping of name to a callable ``(DatasetDict, card_dataset_section) ->
    DatasetDict``, called after the source's splits and features were checked
    against the card's ``sizes`` and ``features`` (e.g. UCF101's frame rows grouped
    into clips). Its output's splits must carry the columns the card names.
    """


@hookspec
def mubench_architectures() -> dict[str, Callable[..., nn.Module]]:
    """Model architectures that cards name in ``models.<family>.architecture``.

    Returns a mapping of name to a callable ``(task, **params) -> nn.Module`` that
    builds a randomly initialised (or pretrained, if its params say so) model for the task.
    ``task`` is the task type's instance, after :meth:`~mubench.api.TaskType.prepare` has
    read the training split: ``task.model_kwargs()`` says what to size the model by (a
    classification task's ``num_labels``, ``id2label`` and ``label2id``; an image task's
    ``in_channels``; a tabular task's ``in_features``). ``params`` is the card's
    ``models.<family>.params``; ``mubench validate`` checks each against the callable's
    signature (a default's type, or the annotation where the default is None). The callable
    may also offer ``load_original(task_type, source, **params)``, to read a
    published fine-tuned original in its own format (a card's ``original:`` that is not
    ``train``), and ``skeleton(task_type, **params)``, the model without its weights (on
    the meta device, e.g. from a hub config alone), which sizes it (``mubench list
    models``) and shows its structure to methods that need one (convolutions, blocks);
    without it the callable itself is called on the meta device.
    """


@hookspec
def mubench_methods() -> list[type[Method]]:
    """Unlearning methods (subclasses of :class:`mubench.api.Method`) this plugin contributes.

    Returns a list of classes, keyed by their ``name``. A class's ``taxonomy`` (a
    :class:`mubench.api.Taxonomy`, or None) and ``search_space`` (hyperparameters to
    :class:`mubench.api.Range` or :class:`mubench.api.Choice`) are checked as it
    registers; a malformed one leaves the method out with a one-line warning.
    """


@hookspec
def mubench_metrics() -> list[Metric]:
    """Metrics and attacks (:class:`mubench.api.Metric`) that cards select by name in ``metrics:``.

    Returns a list of metrics, keyed by their ``name``. A metric says its direction
    (``higher_is_better``), the per-example record columns it ``needs`` (``loss``,
    ``confidence``, ``correct``, ``score``, ``generation``, ``reference``,
    ``token_logprobs``, ``token_correct``, or any a task type records), its
    ``scope`` (one value per split, or one attack value on D_f) and what
    ``forgotten`` means for it (reach chance, match the retrained model, lower, higher).
    """
