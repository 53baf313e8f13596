"""How long UCF101's adapter takes to group the hub's frame rows into clips, at the real row count.

flwrlabs/ucf101 serves about 1.79 M training frame rows (about 9.5 k clips); every run
groups them again. This builds a frame table of that shape in memory (clip ids as the
hub spells them, rows shuffled, each frame's image a few bytes so that the table fits
in memory) and times ``mubench.tasks.ucf101.clips`` on it, then reports the memory
the chosen frames would take at a real frame's encoded size.

    python benchmarks/bench_ucf101_clips.py [--clips 9537] [--frames 188] [--rounds 3] [--frame-kib 12]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def frame_table(n_clips: int, frames: int, seed: int = 0):
    """A shuffled frame-row dataset in flwrlabs/ucf101's schema, with tiny image payloads."""
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    clip = np.repeat(np.arange(n_clips), frames)
    frame = np.tile(np.arange(frames), n_clips)
    order = rng.permutation(len(clip))
    clip, frame = clip[order], frame[order]
    names = np.array([f"v_Action{c % 101:03d}_g{c // 101:02d}_c{c % 7:02d}" for c in range(n_clips)], dtype=object)
    images = pa.StructArray.from_arrays([pa.array(np.full(len(clip), b"img", dtype=object), pa.binary()),
                                         pa.nulls(len(clip), pa.string())], names=["bytes", "path"])
    table = pa.table({"image": images, "video_id": pa.array(names[clip]), "clip_id": pa.array(names[clip]),
                      "frame": pa.array(frame, pa.int64()), "label": pa.array(clip % 101, pa.int64())})
    features = datasets.Features({"image": datasets.Image(), "video_id": datasets.Value("string"),
                                  "clip_id": datasets.Value("string"), "frame": datasets.Value("int64"),
                                  "label": datasets.ClassLabel(num_classes=101)})
    return datasets.Dataset(datasets.table.InMemoryTable(table.cast(features.arrow_schema)),
                            info=datasets.DatasetInfo(features=features))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=9537, help="clips in the split (UCF101 split 1 train: 9,537)")
    parser.add_argument("--frames", type=int, default=188, help="frames per clip (1.79 M rows / 9,537 clips)")
    parser.add_argument("--per-clip", type=int, default=16, help="frames_per_clip, as the card sets it")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frame-kib", type=float, default=12.0, help="an encoded frame's size, for the memory estimate")
    args = parser.parse_args()

    from mubench.tasks.ucf101 import clips

    frames = frame_table(args.clips, args.frames)
    seconds = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        grouped = clips(frames, args.per_clip)
        seconds.append(time.perf_counter() - start)
    chosen = len(grouped) * args.per_clip
    print(f"{len(frames):,} frame rows -> {len(grouped):,} clips of {args.per_clip} frames")
    print(f"grouping: median {statistics.median(seconds):.2f} s over {args.rounds} rounds "
          f"(min {min(seconds):.2f}, max {max(seconds):.2f})")
    print(f"chosen frames held in memory: {chosen:,}, about {chosen * args.frame_kib / 1024 ** 2:.2f} GiB "
          f"at {args.frame_kib:g} KiB a frame")


if __name__ == "__main__":
    main()
