"""Speech Commands as its parquet export serves it: long ``_silence_`` recordings cut into one-second clips."""
from __future__ import annotations

import io

import numpy as np

from mubench.data import undecoded

SILENCE = "_silence_"


def one_second_silence(raw, spec: dict):
    """Each split with every ``_silence_`` clip longer than a second cut into consecutive one-second clips.

    The export's train and validation ``_silence_`` rows are the dataset's background
    noise recordings, about a minute each (its card says to cut them into
    one-second pieces); the test split's are one second already and stay as they
    are. A cut clip keeps its row's other columns; its ``file`` gets ``#k`` for
    its k-th second and the remainder shorter than a second is dropped. Cut clips
    follow the split's other rows.
    """
    import datasets

    return datasets.DatasetDict({name: cut_silence(split) for name, split in raw.items()})


def cut_silence(split):
    """One split with its long ``_silence_`` clips cut (see :func:`one_second_silence`)."""
    import datasets
    import soundfile

    split = undecoded(split)
    silence = split.features["label"].str2int(SILENCE)
    rows = np.flatnonzero(np.asarray(split["label"]) == silence)
    pieces = {name: [] for name in split.column_names}
    cut = []
    for row in rows.tolist():
        example = split[row]
        samples, rate = soundfile.read(io.BytesIO(example["audio"]["bytes"]), dtype="int16")
        if len(samples) <= rate:
            continue
        cut.append(row)
        for k in range(len(samples) // rate):
            wav = io.BytesIO()
            soundfile.write(wav, samples[k * rate:(k + 1) * rate], rate, format="WAV", subtype="PCM_16")
            for name in split.column_names:
                pieces[name].append(example[name])
            pieces["file"][-1] = f"{example['file']}#{k}"
            pieces["audio"][-1] = {"bytes": wav.getvalue(), "path": pieces["file"][-1]}
    if not cut:
        return split
    kept = split.select(np.setdiff1d(np.arange(len(split)), cut))
    # built with the stored struct, then cast: encoding into Audio would need torchcodec
    stored = datasets.Features({**split.features, "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}})
    pieces = datasets.Dataset.from_dict(pieces, features=stored).cast_column("audio", split.features["audio"])
    return datasets.concatenate_datasets([kept, pieces])
