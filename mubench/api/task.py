"""The task type: what a kind of task brings to the harness.

The core assumes nothing about inputs, labels or tensor shapes: it loads the card's
dataset, asks the task type to encode and collate it, and calls the hooks below for
the forward pass, the per-sample loss and the metrics.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from mubench.api.card import TaskCard
from mubench.api.losses import distill_kl


class TaskType:
    """Base class of task types. Subclasses set ``name`` and implement the hooks.

    ``metric`` is the primary metric (the one the overall score uses), ``overall``
    the kind of overall score (``accuracy``: closeness of D_f to :attr:`chance`;
    ``generation``: MU-Bench's text-generation score), and ``records`` the
    per-example columns :meth:`evaluate_batch` can fill, which decide the metrics a
    card may select. ``generated`` names those of them that come from generating
    (images from class prompts): the evaluator asks for them only on the examples
    :meth:`generation_positions` picks in each part, not on every example.
    ``sample_records`` are those generated columns kept for people to look at (images
    and their prompts), saved beside the result; they must be among ``generated``.
    ``output`` says what :meth:`forward` returns, for methods that read it:
    ``class_logits`` (``[batch, classes]``, the targets in ``inputs["labels"]``),
    ``token_logits`` (``[batch, tokens, vocabulary]``, the targets in ``inputs["labels"]``,
    ``IGNORE`` where none) or ``noise`` (a diffusion model's noise prediction).
    """

    name: ClassVar[str]
    output: ClassVar[str] = "class_logits"
    metric: ClassVar[str] = "acc"
    overall: ClassVar[str] = "accuracy"
    records: ClassVar[frozenset] = frozenset({"loss", "confidence", "correct", "score", "stratum"})
    generated: ClassVar[frozenset] = frozenset()
    sample_records: ClassVar[frozenset] = frozenset()

    def __init__(self, card: TaskCard):
        self.card = card
        self.columns = card.columns

    def column(self, role: str) -> str:
        """The dataset column that plays ``role`` (the card's ``dataset.columns`` maps roles to names)."""
        return self.columns.get(role, role)

    # --- data -------------------------------------------------------------------------
    def use_model(self, params: dict) -> None:
        """The card's ``params`` of the model family this task will feed (e.g. to load its processor)."""

    def prepare(self, train) -> None:
        """Read what the task needs from the training split (label set, vocabulary, …)."""

    def strata(self, split) -> np.ndarray | None:
        """One stratum per example for class-stratified deletion sets, or None for none."""
        return None

    def preprocess(self, batch: dict[str, list]) -> dict[str, list]:
        """Decode, tokenize or featurize a batch of raw examples (``datasets.map``, batched).

        Task types that implement it have its output cached on disk, per split and
        per :meth:`preprocess_key`; :meth:`encode` then receives the cached split.
        """
        raise NotImplementedError

    @property
    def preprocesses(self) -> bool:
        """Whether this task (with the model family it feeds) preprocesses and caches its splits."""
        return type(self).preprocess is not TaskType.preprocess

    def preprocess_key(self) -> dict:
        """Everything :meth:`preprocess`'s output depends on besides the data (processor, lengths, …)."""
        return {}

    def encode(self, split) -> torch.utils.data.Dataset:
        """Turn a ``datasets.Dataset`` split (preprocessed, if :meth:`preprocess` is implemented)
        into a map-style dataset of model inputs."""
        raise NotImplementedError

    def collate(self, items) -> dict[str, torch.Tensor]:
        """Batch what the encoded dataset returns for a list of indices.

        Datasets that fetch whole batches (like :class:`TensorExamples`) return them as is.
        """
        return items if isinstance(items, dict) else torch.utils.data.default_collate(items)

    def draw(self, inputs: dict, generator: torch.Generator | None) -> dict:
        """The randomness a batch's loss needs beyond its examples (diffusion: noise and timesteps), added to ``inputs``.

        Called as batches are collated: with the run's generator for training (shuffled)
        loaders, so a run is reproducible, and with ``None`` for unshuffled ones, where
        a task draws per example (from its index) so the result does not depend on the
        batch. Students and teachers then see the same draw. The default draws nothing.
        """
        return inputs

    def generation_positions(self, part) -> np.ndarray:
        """Positions within an evaluated part (a dataset with ``data`` and ``indices``) whose :attr:`generated`
        columns are recorded; the default is every example."""
        return np.arange(len(part))

    # --- model ------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        """What architecture builders need to know about the task (e.g. ``num_labels``)."""
        return {}

    def forward(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """Logits, shaped ``[batch, ..., classes]`` (``[batch, tokens, vocabulary]`` for language models)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The task loss per example, shape ``[batch]`` (for sequences: the mean NLL of its target tokens)."""
        raise NotImplementedError

    def incompetent(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model that knows nothing of the task, made from a fresh model of the family (Bad-T's incompetent teacher).

        The default is the fresh model itself (a random head on a pretrained backbone);
        a task whose fresh model is already competent (a pretrained diffusion model)
        re-initialises what it must.
        """
        return model

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, inputs: dict, temperature: float = 1.0) -> torch.Tensor:
        """KL(teacher ‖ student) of softened outputs, averaged over what the task predicts (Bad-T, SCRUB).

        The default treats each row of logits as one prediction; sequence tasks
        average over target tokens, padding excluded.
        """
        return distill_kl(student, teacher, temperature)

    def relabel(self, inputs: dict, forget: torch.Tensor, mode: str, generator: torch.Generator) -> dict:
        """Inputs whose ``forget`` examples carry random targets (RandLabel, SalUn).

        ``mode`` is ``random`` (a target drawn anew each call, as the authors draw it),
        ``random_wrong`` (drawn among the wrong ones) or ``shift`` (deterministic).
        Raise NotImplementedError where corrupting targets has no meaning.
        """
        raise NotImplementedError

    # --- evaluation -------------------------------------------------------------------
    def evaluate_batch(self, model: torch.nn.Module, inputs: dict, needs: frozenset) -> dict:
        """Per-example records of one batch: columns of length ``batch`` (tensors, or lists of strings or arrays).

        ``needs`` names the columns the selected metrics read (a subset of
        :attr:`records`); fill at least those. Scoring tasks run a forward pass
        (the default: :meth:`forward`, then :meth:`eval_outputs`); generative tasks
        also generate when ``generation`` is needed. Common columns: ``loss``
        (per-example loss), ``confidence`` (probability of the true target),
        ``correct``, ``score`` (the primary metric per example), ``stratum`` (to
        balance attacks per class), ``generation`` and ``reference`` (texts).
        """
        return self.eval_outputs(self.forward(model, inputs).float(), inputs)

    def eval_outputs(self, logits: torch.Tensor, inputs: dict) -> dict[str, torch.Tensor]:
        """Per-example records from a scoring forward pass (see :meth:`evaluate_batch`)."""
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """The primary metric of a model that guesses at random."""
        raise NotImplementedError
