"""Loading a card's dataset and serving D_f, D_r and D_test to the loop."""
from __future__ import annotations

import functools
import hashlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mubench.errors import UserError, unknown_name

if TYPE_CHECKING:
    from mubench.api.card import TaskCard

log = logging.getLogger("mubench")


@dataclass
class DatasetReport:
    """What loading a card's dataset found: the source's split sizes, problems and notes.

    A problem means the data does not have the schema the card describes (a missing
    split or column, a feature of another type, labels that do not fit); a note is a
    difference that does not stop a run (a split of another size than the card's).
    """

    source_sizes: dict = field(default_factory=dict)
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def feature_kind(feature) -> str:
    """A feature's type as cards name it: ``Image``, ``Audio``, ``ClassLabel``, ``list``, ``struct`` or a Value's dtype."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, dict):
        return "struct"
    if isinstance(feature, (list, datasets.Sequence, getattr(datasets, "List", datasets.Sequence), datasets.LargeList)):
        return "list"
    return type(feature).__name__


def read_source(spec: dict):
    """A ``datasets`` source as a ``DatasetDict``: a ``save_to_disk`` folder, else ``load_dataset``.

    The card's ``path``, ``name``, ``revision``, ``data_dir``, ``data_files`` and
    ``load_args`` (any other ``load_dataset`` argument) are passed on; a hub repo's
    parquet export is ``revision: refs/convert/parquet`` with ``data_dir: <config>``.
    """
    import datasets

    path = spec["path"]
    if (Path(path) / "dataset_dict.json").is_file():
        return datasets.load_from_disk(path)
    arguments = {key: spec[key] for key in ("revision", "data_dir", "data_files") if spec.get(key) is not None}
    try:
        return datasets.load_dataset(path, spec.get("name"), **arguments, **spec.get("load_args", {}))
    except (FileNotFoundError, ConnectionError, OSError, ValueError, RuntimeError) as e:
        hint = ""
        if "scripts are no longer supported" in str(e):
            hint = " (a script-only repo: name its parquet export with revision: refs/convert/parquet and data_dir: <config>)"
        raise UserError(f"cannot load dataset '{path}': {str(e).splitlines()[0]}{hint}") from None


def load_shifted(card: TaskCard):
    """The card's shifted test set (``dataset.shifted_test`` with ``enabled: true``), columns renamed to the card's; else None.

    It is read like any ``datasets`` source (``path``, ``name``, ``revision``,
    ``data_dir``, …), its ``split`` (default ``test``) taken, its ``columns`` (role ->
    its column) renamed to the card's ``dataset.columns``, and cut to its first
    ``max_examples``: MU-Bench's transfer evaluation (SAMSum → XSum, IMDB → Rotten Tomatoes).
    """
    spec = card.dataset.get("shifted_test") or {}
    if not spec.get("enabled", False):
        return None
    raw = read_source(spec)
    split = spec.get("split", "test")
    if split not in raw:
        raise UserError(f"task '{card.name}': the shifted test source '{spec['path']}' has no split {split!r} (it has: {', '.join(raw)})")
    data = raw[split]
    renames = {spec["columns"][role]: card.columns.get(role, role) for role in spec.get("columns", {})}
    absent = sorted(set(renames) - set(data.column_names))
    if absent:
        raise UserError(f"task '{card.name}': the shifted test set lacks column(s) {', '.join(absent)} "
                        f"(it has: {', '.join(data.column_names)})")
    data = data.select_columns(list(renames)).rename_columns({k: v for k, v in renames.items() if k != v})
    if spec.get("max_examples") is not None:
        data = data.select(range(min(len(data), spec["max_examples"])))
    return data


def local_copy(spec: dict, data_dir: str | Path) -> dict:
    """The card's dataset section pointed at ``--data-dir``.

    The hub's name, revision and files no longer apply; its ``data_dir`` does where the
    copy has that folder (a downloaded parquet export keeps each config in its own).
    """
    local = {k: v for k, v in spec.items() if k not in ("name", "revision", "data_dir", "data_files")} | {"path": str(data_dir)}
    if spec.get("data_dir") and (Path(data_dir) / spec["data_dir"]).is_dir():
        local["data_dir"] = spec["data_dir"]
    return local


def check_source(raw, spec: dict, report: DatasetReport) -> None:
    """Compare what the source served with the card's ``sizes`` (split -> rows) and ``features`` (column -> kind)."""
    report.source_sizes = {name: len(split) for name, split in raw.items()}
    for name, expected in spec.get("sizes", {}).items():
        if name not in raw:
            report.problems.append(f"the source has no split '{name}' (it has: {', '.join(raw)})")
        elif len(raw[name]) != expected:
            report.notes.append(f"split '{name}' has {len(raw[name]):,} rows; the card's source has {expected:,}")
    for name, split in raw.items():
        for column, kind in spec.get("features", {}).items():
            if column not in split.features:
                report.problems.append(f"split '{name}' has no column '{column}' (it has: {', '.join(split.column_names)})")
            elif feature_kind(split.features[column]) != kind:
                report.problems.append(f"split '{name}' column '{column}' is {feature_kind(split.features[column])}, "
                                       f"the card says {kind}")


def load_splits(card: TaskCard, loaders: dict, data_dir: str | Path | None = None, adapters: dict | None = None,
                report: DatasetReport | None = None):
    """The card's ``train`` and ``test`` splits as a ``datasets.DatasetDict``.

    The source is a registered loader (``loader:``) or ``datasets`` (``path:``, see
    :func:`read_source`); ``data_dir`` (``--data-dir``) points it at a local copy (a
    loader reads it only if it says ``reads_data_dir``; otherwise ``datasets`` does).
    What the source served is checked against the card's ``sizes`` and ``features``,
    then the card's ``adapter`` turns it into the task's examples, whose splits and
    columns are checked too. Problems raise one :class:`UserError`, unless ``report``
    is given to collect them (``mubench data``).
    """
    import datasets

    spec = dict(card.dataset)
    collect = report is not None
    report = report if collect else DatasetReport()
    loader = spec.get("loader")
    if loader is not None and loader not in loaders:
        raise unknown_name("dataset loader", loader, loaders)
    if data_dir is not None:
        spec = local_copy(spec, data_dir)
        if loader is not None and not getattr(loaders[loader], "reads_data_dir", False):
            loader = None
    if data_dir is None and "download" in spec:
        raise UserError(f"task '{card.name}': no hub serves its data; {spec['download']}, and pass the folder with --data-dir")
    raw = loaders[loader](spec) if loader is not None else read_source(spec)
    check_source(raw, spec, report)
    names = spec.get("splits", {"train": "train", "test": "test"})
    if spec.get("adapter") is not None and not report.problems:
        adapters = adapters or {}
        if spec["adapter"] not in adapters:
            raise unknown_name("dataset adapter", spec["adapter"], adapters)
        raw = adapters[spec["adapter"]](raw, spec)
    for role, split in names.items() if not report.problems else ():
        if split not in raw:
            report.problems.append(f"dataset has no split {split!r} (it has: {', '.join(raw)})")
            continue
        absent = set(card.columns.values()) - set(raw[split].column_names)
        if absent:
            report.problems.append(f"{role} split lacks column(s) {', '.join(sorted(absent))} named in dataset.columns")
    if report.problems and not collect:
        more = f" (and {len(report.problems) - 1} more; `mubench data {card.name}` lists them)" if len(report.problems) > 1 else ""
        raise UserError(f"task '{card.name}': {report.problems[0]}{more}")
    return datasets.DatasetDict({role: raw[split] for role, split in names.items() if split in raw})


PREPROCESS_FORMAT = 2  # bump when the cache layout changes


def preprocessed(task, split, role: str, data_sha256: str, card_name: str):
    """``split`` after ``task.preprocess``, computed once and cached under ``$MUBENCH_HOME/preprocessed``.

    The cache entry's identity is the raw data's fingerprint and
    :meth:`TaskType.preprocess_key` (the processor and its settings), so a second run
    reads Arrow files instead of decoding or tokenizing again. The entry verifies
    itself; one that fails is rebuilt (preprocessing is deterministic).
    """
    import datasets

    from mubench.cache import CacheEntry
    from mubench.files import mubench_home

    identity = {"card": card_name, "role": role, "data": data_sha256, "task": task.preprocess_key(), "format": PREPROCESS_FORMAT}
    entry = CacheEntry.under(mubench_home() / "preprocessed" / card_name, identity, f"preprocessed {role} split of {card_name}",
                             "it is rebuilt", prefix=f"{role}-")
    file_name = f"{role}.arrow"

    def build(folder: Path) -> dict:
        log.info("preprocessing %s split of %s (%d examples); cached at %s", role, card_name, len(split), entry.folder)
        bars = not datasets.are_progress_bars_disabled()
        if not sys.stderr.isatty():  # as mubench's own bars: shown on a terminal only
            datasets.disable_progress_bars()
        try:
            undecoded(split).map(lambda batch: storable(task.preprocess(batch)), batched=True, batch_size=64,
                                 remove_columns=split.column_names, cache_file_name=str(folder / file_name),
                                 load_from_cache_file=False, desc=f"preprocess {role}")
        finally:
            if bars:
                datasets.enable_progress_bars()
        return {"n_examples": len(split)}

    with entry.locked():
        if entry.read_or_discard() is None:
            entry.commit(build)
    return datasets.Dataset.from_file(str(entry.folder / file_name))


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
    zero) before its buffers are hashed, with the column's name and type. A selection
    of rows (the indices mapping that ``select``, ``filter`` or an adapter leave) hashes
    its indices too, so two selections of one table never hash alike.
    """
    import pyarrow as pa

    digest = hashlib.sha256()
    tables = [split.data.table] + ([split._indices.table] if split._indices is not None else [])
    for table in tables:
        for name, column in zip(table.column_names, table.columns):
            digest.update(f"{name}:{column.type}".encode())
            array = pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
            for buffer in array.buffers():  # children's buffers included
                if buffer is not None:
                    digest.update(memoryview(buffer))
    return digest.hexdigest()


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


@dataclass
class Batch:
    """A collated batch: the task's ``inputs`` and which examples belong to D_f."""

    inputs: dict
    forget: torch.Tensor

    def to(self, device: torch.device) -> Batch:
        """The batch on ``device`` (tensors only; other inputs, such as texts, stay as they are)."""
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

    def subset(self, positions: np.ndarray) -> _Part:
        """The examples at ``positions`` of this part."""
        return _Part(self.data, self.indices[positions], self.forget.numpy()[positions])

    def __getitems__(self, positions):
        chosen = self.indices[positions].tolist()
        fetch = getattr(self.data, "__getitems__", None)
        items = fetch(chosen) if fetch else [self.data[i] for i in chosen]
        return items, self.forget[positions]


class UnlearningData:
    """The encoded training and test splits with D_f / D_r, and loaders over any part.

    Parts: ``forget`` (D_f), ``retain`` (D_r), ``train`` (D_f ∪ D_r, flagged), ``test``,
    ``shifted`` (a shifted test set) where the task has one, and, for class-wise
    deletion, ``test`` (the test examples of the other classes, ``test_rows``) and
    ``forgotten`` (those of the deleted classes, ``forgotten_rows``).
    """

    def __init__(self, task, train: Dataset, test: Dataset, forget: np.ndarray, seed: int, device: torch.device,
                 shifted: Dataset | None = None, test_rows: np.ndarray | None = None, forgotten_rows: np.ndarray | None = None):
        self.task, self.train, self.test, self.shifted = task, train, test, shifted
        self.test_rows = np.arange(len(test)) if test_rows is None else test_rows
        self.forgotten_rows = forgotten_rows
        self.forget = np.sort(forget)
        self.retain = np.setdiff1d(np.arange(len(train)), self.forget)
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)
        self.pin_memory = device.type == "cuda"

    def part(self, name: str, retain_fraction: float | None = None, retain_size: int | None = None, max_size: int | None = None) -> _Part:
        """The examples of part ``name``; ``retain_fraction`` (a share) or ``retain_size`` (a count) draws a fresh random
        subset of D_r."""
        if name in ("test", "shifted", "forgotten"):
            data = self.shifted if name == "shifted" else self.test
            idx = {"test": self.test_rows, "forgotten": self.forgotten_rows}.get(name, np.arange(len(data)))
            flags = np.zeros(len(idx), bool)
        else:
            retain = self.retain
            if retain_fraction is not None or retain_size is not None:
                size = retain_size if retain_size is not None else max(1, round(retain_fraction * len(retain)))
                retain = np.sort(self.rng.choice(retain, size=min(size, len(retain)), replace=False))
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
        return self.loader_of(self.part(name, **part_options), batch_size, shuffle)

    def loader_of(self, part: _Part, batch_size: int, shuffle: bool = False) -> DataLoader:
        """A DataLoader of :class:`Batch` over ``part``.

        Only a shuffled loader draws from the data's generator (its order, and the
        task's :meth:`~mubench.api.TaskType.draw`); an unshuffled one (evaluation) gets
        its own, so that evaluating never moves the training's random streams (a
        DataLoader draws a seed from its generator on every pass).
        """
        return DataLoader(
            part,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=self.generator if shuffle else torch.Generator().manual_seed(0),
            collate_fn=functools.partial(self._collate, generator=self.generator if shuffle else None),
            pin_memory=self.pin_memory,
        )

    def _collate(self, fetched, generator: torch.Generator | None) -> Batch:
        items, forget = fetched
        return Batch(self.task.draw(self.task.collate(items), generator), forget)
