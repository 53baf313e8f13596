"""UTKFace (Zhang et al. 2017) as Deep Unlearn uses it: faces classified into age groups.

The hub copy (``py97/UTKFace-Cropped``, a WebDataset tar of the 200×200 aligned and
cropped faces) has one split and no label column: each face's age, gender and race
are in its key, ``UTKFace/<age>_<gender>_<race>_<date>``. The adapter reads the age,
bins it into the card's ``age_groups``, downsizes the images to ``image_size`` pixels
and draws a seeded, class-stratified test split (``test_size``).
"""
from __future__ import annotations

import re

import numpy as np

from mubench.errors import UserError

KEY = re.compile(r"(?:^|/)(\d+)_[^/]*$")


def age(key: str) -> int:
    """The age in a UTKFace key ``.../<age>_<gender>_<race>_<date>``."""
    match = KEY.search(key)
    if match is None:
        raise UserError(f"UTKFace key {key!r} does not start with <age>_ (expected <age>_<gender>_<race>_<date>)")
    return int(match.group(1))


def age_groups(raw, spec: dict):
    """One split of UTKFace faces to ``train`` and ``test`` splits with an age-group ``label`` (see the module)."""
    import datasets

    options = spec.get("options", {})
    edges = options["age_groups"]  # lower bounds of the groups after the first, e.g. [20, 30, 45, 60]
    names = [f"{low}-{high - 1}" for low, high in zip([0] + edges, edges + [None]) if high] + [f"{edges[-1]}+"]
    image, size = options.get("source_image", "jpg.chip.jpg"), int(options.get("image_size", 64))
    split = raw["train"]

    def convert(batch):
        return {"image": [face.convert("RGB").resize((size, size)) for face in batch[image]],
                "label": [int(np.searchsorted(edges, age(key), side="right")) for key in batch["__key__"]]}

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    faces = split.map(convert, batched=True, batch_size=256, remove_columns=split.column_names, features=features)
    parts = faces.train_test_split(test_size=options.get("test_size", 0.2), seed=options.get("seed", 0), stratify_by_column="label")
    return datasets.DatasetDict({"train": parts["train"], "test": parts["test"]})
