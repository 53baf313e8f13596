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


class TaskType:
    """Base class of task types. Subclasses set ``name`` and implement the hooks.

    ``metric`` is the primary metric (the one the overall score uses) and ``chance``
    its value for a model that guesses at random.
    """

    name: ClassVar[str]
    metric: ClassVar[str] = "acc"

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

    # --- model ------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        """What architecture builders need to know about the task (e.g. ``num_labels``)."""
        return {}

    def forward(self, model: torch.nn.Module, inputs: dict) -> torch.Tensor:
        """Logits, shaped ``[batch, ..., classes]`` (per token for generative tasks)."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The task loss per example, shape ``[batch]``."""
        raise NotImplementedError

    def relabel(self, inputs: dict, forget: torch.Tensor, mode: str, generator: torch.Generator) -> dict:
        """Inputs whose ``forget`` examples carry wrong targets (RandLabel, SalUn).

        ``mode`` is ``random`` (a new wrong target each call) or ``shift`` (deterministic).
        Raise NotImplementedError where corrupting targets has no meaning.
        """
        raise NotImplementedError

    # --- evaluation -------------------------------------------------------------------
    def eval_outputs(self, logits: torch.Tensor, inputs: dict) -> dict[str, torch.Tensor]:
        """Per-example statistics, each shape ``[batch]``.

        Must include ``loss`` and ``confidence`` (the model's probability of the true
        target), which the membership-inference attacks read, and may include
        ``stratum`` to balance the attacks per class.
        """
        raise NotImplementedError

    def metrics(self, outputs: dict[str, np.ndarray]) -> dict[str, float]:
        """Task metrics of one split from the concatenated :meth:`eval_outputs`."""
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """The primary metric of a model that guesses at random."""
        raise NotImplementedError
