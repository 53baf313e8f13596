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


class TensorExamples(torch.utils.data.Dataset):
    """Examples held as equal-length tensors; fetches a whole batch by one indexing op."""

    def __init__(self, **tensors: torch.Tensor):
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"tensors differ in length: {lengths}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index):
        return {k: t[index] for k, t in self.tensors.items()}

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices)
        return {k: t[index] for k, t in self.tensors.items()}


SHAPE = "__shape"  # suffix of the column that holds each stored array's shape


def storable(batch: dict) -> dict:
    """A preprocessed batch as Arrow stores it fast: every per-example array flattened, its shape beside it."""
    out = {}
    for key, values in batch.items():
        values = [np.asarray(v) for v in values]
        if values and values[0].ndim >= 1:
            out[key] = [v.ravel() for v in values]
            out[key + SHAPE] = [np.asarray(v.shape, dtype=np.int32) for v in values]
        else:
            out[key] = [v.item() for v in values]
    return out


class ArrowExamples(torch.utils.data.Dataset):
    """Preprocessed examples in an Arrow table, read as numpy views of its (memory-mapped) buffers.

    A batch is a mapping of column to a list of per-example numpy arrays in their
    stored shapes and dtypes, which the task's :meth:`TaskType.collate` pads or stacks.
    Examples are sliced out of the buffers directly: Arrow's own ``take`` would copy
    whole chunks of list columns for every batch.
    """

    def __init__(self, split):
        table = split.data.table
        self.length = table.num_rows
        self.columns = {}
        for key in table.column_names:
            if key.endswith(SHAPE):
                continue
            chunks = table.column(key).chunks
            starts = np.cumsum([0] + [len(c) for c in chunks])
            if key + SHAPE in table.column_names:
                shapes = np.concatenate([c.flatten().to_numpy() for c in table.column(key + SHAPE).chunks])
                rank = len(shapes) // max(self.length, 1)
                views = [(c.offsets.to_numpy(), c.flatten().to_numpy(zero_copy_only=False)) for c in chunks]
                self.columns[key] = (starts, views, shapes.reshape(self.length, rank))
            else:
                self.columns[key] = (starts, [c.to_numpy(zero_copy_only=False) for c in chunks], None)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return self.__getitems__([index])

    def __getitems__(self, indices) -> dict[str, list]:
        indices = np.asarray(indices)
        batch = {}
        for key, (starts, views, shapes) in self.columns.items():
            which = np.searchsorted(starts, indices, side="right") - 1
            if shapes is None:
                batch[key] = [views[c][i - starts[c]] for c, i in zip(which, indices)]
                continue
            items = []
            for c, i in zip(which, indices):
                offsets, values = views[c]
                j = i - starts[c]
                items.append(values[offsets[j]:offsets[j + 1]].reshape(shapes[i]))
            batch[key] = items
        return batch
