"""UCF101 as the hub serves it (flwrlabs/ucf101): one row per frame, grouped here into clips."""
from __future__ import annotations

import numpy as np

from mubench.errors import UserError


def frames_to_clips(raw, spec: dict):
    """Each split's frame rows (``image``, ``clip_id``, ``frame``, ``label``) as one row per clip.

    Rows are grouped by ``clip_id`` and ordered by ``frame`` with Arrow's sort (no image
    is decoded); ``options.frames_per_clip`` frames (default 16, VideoMAE's clip length;
    null keeps every frame) spread uniformly over each clip are kept, still encoded,
    in a ``frames`` list column. Clips come in ``clip_id`` order.
    """
    import datasets

    per_clip = spec.get("options", {}).get("frames_per_clip", 16)
    return datasets.DatasetDict({name: clips(split, per_clip) for name, split in raw.items()})


def clips(frames, per_clip: int | None):
    """One split's frame rows grouped into clips (see :func:`frames_to_clips`)."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    if frames._indices is not None:
        frames = frames.flatten_indices()
    table = frames.data.table
    order = pc.sort_indices(table.select(["clip_id", "frame"]),
                            sort_keys=[("clip_id", "ascending"), ("frame", "ascending")]).to_numpy()
    clip_ids = table.column("clip_id").take(order)
    codes = pc.dictionary_encode(clip_ids.combine_chunks()).indices.to_numpy()
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1]).astype(np.int64)
    counts = np.diff(np.append(starts, len(order)))
    labels = np.asarray(table.column("label").take(order).to_numpy(zero_copy_only=False))
    if len(labels) and not np.array_equal(labels, np.repeat(labels[starts], counts)):
        raise UserError("UCF101: the frames of a clip carry different labels")
    if per_clip is None:
        chosen, sizes = np.arange(len(order)), counts
    else:
        steps = np.linspace(0, 1, per_clip)
        chosen = np.concatenate([start + np.round(steps * (n - 1)).astype(np.int64) for start, n in zip(starts, counts)]
                                or [np.zeros(0, np.int64)])
        sizes = np.full(len(starts), per_clip)
    images = table.column("image").take(order[chosen]).combine_chunks()
    offsets = pa.array(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32))
    features = datasets.Features({"clip_id": datasets.Value("string"), "frames": datasets.List(frames.features["image"]),
                                  "label": frames.features["label"]})
    out = pa.table({"clip_id": clip_ids.take(pa.array(starts)), "frames": pa.ListArray.from_arrays(offsets, images),
                    "label": pa.array(labels[starts], pa.int64())})
    return datasets.Dataset(datasets.table.InMemoryTable(out.cast(features.arrow_schema)), info=datasets.DatasetInfo(features=features))
