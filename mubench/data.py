"""Loading a card's dataset and serving D_f, D_r and D_test to the loop."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mubench.errors import UserError, unknown_name

if TYPE_CHECKING:
    from mubench.api.card import TaskCard

log = logging.getLogger("mubench")


def load_splits(card: TaskCard, loaders: dict, data_dir: str | Path | None = None):
    """The card's ``train`` and ``test`` splits as a ``datasets.DatasetDict``.

    A ``loader:`` card calls a registered built-in loader; a ``path:`` card goes through
    ``datasets``: a folder written by ``save_to_disk`` is read with ``load_from_disk``,
    anything else (a hub id, a local data folder) with ``load_dataset``. ``data_dir``
    (``--data-dir``) replaces the card's ``path`` with a local copy, for offline clusters.
    """
    import datasets

    spec = dict(card.dataset)
    if data_dir is not None:
        spec.pop("loader", None)
        spec.update(path=str(data_dir), name=None, data_dir=None)
    if "loader" in spec:
        if spec["loader"] not in loaders:
            raise unknown_name("dataset loader", spec["loader"], loaders)
        raw = loaders[spec["loader"]](spec)
    elif (Path(spec["path"]) / "dataset_dict.json").is_file():
        raw = datasets.load_from_disk(spec["path"])
    else:
        try:
            raw = datasets.load_dataset(spec["path"], spec.get("name"), data_dir=spec.get("data_dir"))
        except (FileNotFoundError, ConnectionError, OSError, ValueError) as e:
            raise UserError(f"task '{card.name}': cannot load dataset '{spec['path']}': {str(e).splitlines()[0]}") from None
    names = spec.get("splits", {"train": "train", "test": "test"})
    missing = [s for s in names.values() if s not in raw]
    if missing:
        raise UserError(f"task '{card.name}': dataset has no split {missing[0]!r} (it has: {', '.join(raw)})")
    columns = set(card.columns.values())
    for role, split in names.items():
        absent = columns - set(raw[split].column_names)
        if absent:
            raise UserError(f"task '{card.name}': {role} split lacks column(s) {', '.join(sorted(absent))} named in dataset.columns")
    return datasets.DatasetDict({role: raw[split] for role, split in names.items()})


PREPROCESS_FORMAT = 1  # bump when the cache layout changes


def preprocessed(task, split, role: str, data_sha256: str, card_name: str):
    """``split`` after ``task.preprocess``, computed once and cached under ``$MUBENCH_HOME/preprocessed``.

    The cache key is the raw data's fingerprint and :meth:`TaskType.preprocess_key`
    (the processor and its settings), so a second run reads Arrow files instead of
    decoding or tokenizing again.
    """
    import datasets

    from mubench.api.task import storable
    from mubench.files import mubench_home

    key = json.dumps({"data": data_sha256, "task": task.preprocess_key(), "format": PREPROCESS_FORMAT}, sort_keys=True, default=str)
    folder = mubench_home() / "preprocessed" / card_name / hashlib.sha256(key.encode()).hexdigest()[:16]
    path = folder / f"{role}.arrow"
    if not path.is_file():
        log.info("preprocessing %s split of %s (%d examples); cached at %s", role, card_name, len(split), folder)
    folder.mkdir(parents=True, exist_ok=True)
    bars = not datasets.are_progress_bars_disabled()
    if not sys.stderr.isatty():  # as mubench's own bars: shown on a terminal only
        datasets.disable_progress_bars()
    try:
        return undecoded(split).map(lambda batch: storable(task.preprocess(batch)), batched=True, batch_size=64,
                                    remove_columns=split.column_names, cache_file_name=str(path),
                                    load_from_cache_file=True, desc=f"preprocess {role}")
    finally:
        if bars:
            datasets.enable_progress_bars()


def undecoded(split):
    """``split`` with audio and video columns left as raw ``{"bytes", "path"}``.

    datasets decodes them with torchcodec, which needs system FFmpeg libraries; task
    types decode them in ``preprocess`` instead (soundfile, PyAV), once, into the cache.
    """
    import datasets

    for name, feature in split.features.items():
        if isinstance(feature, (datasets.Audio, datasets.Video)) and feature.decode:
            split = split.cast_column(name, type(feature)(decode=False))
    return split


def fingerprint(split) -> str:
    """A content hash of a ``datasets.Dataset``: the same data hashes the same however it is stored.

    Each column is concatenated into fresh Arrow buffers (no chunking, offsets from
    zero) before its buffers are hashed, with the column's name and type.
    """
    import pyarrow as pa

    digest = hashlib.sha256()
    table = split.data.table
    for name, column in zip(table.column_names, table.columns):
        digest.update(f"{name}:{column.type}".encode())
        array = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
        for buffer in array.buffers():  # children's buffers included
            if buffer is not None:
                digest.update(memoryview(buffer))
    return digest.hexdigest()


@dataclass
class Batch:
    """A collated batch: the task's ``inputs`` and which examples belong to D_f."""

    inputs: dict
    forget: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return Batch(moved, self.forget.to(device, non_blocking=True))

    def __len__(self) -> int:
        return len(self.forget)

    def pin_memory(self) -> Batch:
        """Page-locked copies, so that ``to(cuda, non_blocking=True)`` overlaps; DataLoader calls it on CUDA."""
        pinned = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in self.inputs.items()}
        return Batch(pinned, self.forget.pin_memory())


class _Part(Dataset):
    """Some examples of an encoded split, each flagged as D_f or not."""

    def __init__(self, data: Dataset, indices: np.ndarray, forget: np.ndarray):
        self.data, self.indices, self.forget = data, indices, torch.as_tensor(forget, dtype=torch.bool)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitems__(self, positions):
        chosen = self.indices[positions].tolist()
        fetch = getattr(self.data, "__getitems__", None)
        items = fetch(chosen) if fetch else [self.data[i] for i in chosen]
        return items, self.forget[positions]


class UnlearningData:
    """The encoded training and test splits with D_f / D_r, and loaders over any part.

    Parts: ``forget`` (D_f), ``retain`` (D_r), ``train`` (D_f ∪ D_r, flagged), ``test``.
    """

    def __init__(self, task, train: Dataset, test: Dataset, forget: np.ndarray, seed: int, device: torch.device):
        self.task, self.train, self.test = task, train, test
        self.forget = np.sort(forget)
        self.retain = np.setdiff1d(np.arange(len(train)), self.forget)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.pin_memory = device.type == "cuda"

    def part(self, name: str, retain_fraction: float | None = None, max_size: int | None = None) -> _Part:
        """The examples of part ``name``; ``retain_fraction`` draws a fresh random share of D_r."""
        if name == "test":
            idx, flags, data = np.arange(len(self.test)), np.zeros(len(self.test), bool), self.test
        else:
            retain = self.retain
            if retain_fraction is not None:
                size = max(1, round(retain_fraction * len(retain)))
                retain = np.sort(self.rng.choice(retain, size=size, replace=False))
            pieces = {"forget": [self.forget], "retain": [retain], "train": [self.forget, retain]}[name]
            idx = np.concatenate(pieces)
            flags = np.concatenate([np.full(len(p), p is self.forget) for p in pieces])
            data = self.train
        if max_size is not None and len(idx) > max_size:  # the same subset every time it is asked for
            keep = np.sort(np.random.default_rng(0).choice(len(idx), size=max_size, replace=False))
            idx, flags = idx[keep], flags[keep]
        return _Part(data, idx, flags)

    def loader(self, name: str, batch_size: int, shuffle: bool = True, **part_options) -> DataLoader:
        """A DataLoader of :class:`Batch` over part ``name`` (see :meth:`part`)."""
        return DataLoader(
            self.part(name, **part_options),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=self.generator,
            collate_fn=self._collate,
            pin_memory=self.pin_memory,
        )

    def _collate(self, fetched) -> Batch:
        items, forget = fetched
        return Batch(self.task.collate(items), forget)
