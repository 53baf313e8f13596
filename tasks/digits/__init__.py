"""The embedded default task: scikit-learn's bundled handwritten digits (no download)."""
from __future__ import annotations

import numpy as np


def load_digits(spec: dict):
    """1,797 real 8×8 digit images (grey, uint8) in 10 classes, split train/test stratified.

    ``options``: ``test_size`` (default 0.2) and ``seed`` (default 0) of the split;
    ``train_size`` keeps only that many training examples (stratified, from the same
    seed): a small training split that a model can memorise; ``label_noise`` replaces
    that share of the labels, in both splits, by labels drawn uniformly (seeded), so
    that fitting the training split means memorising it (Zhang et al. 2017) while
    members and non-members still come from one distribution.
    """
    import datasets
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    options = spec.get("options", {})
    digits = sklearn_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    features = datasets.Features({
        "image": datasets.Array2D(shape=(8, 8), dtype="uint8"),
        "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
    })
    train, test = train_test_split(np.arange(len(images)), test_size=options.get("test_size", 0.2),
                                   stratify=digits.target, random_state=options.get("seed", 0))
    if options.get("train_size"):
        train, _ = train_test_split(train, train_size=options["train_size"], stratify=digits.target[train],
                                    random_state=options.get("seed", 0))
    labels = digits.target.copy()
    if options.get("label_noise"):
        rng = np.random.default_rng(options.get("seed", 0))
        noisy = rng.random(len(labels)) < options["label_noise"]
        labels[noisy] = rng.integers(0, 10, noisy.sum())
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"image": images[idx], "label": labels[idx]}, features=features)
        for name, idx in (("train", train), ("test", test))
    })


load_digits.options_schema = {
    "type": "object", "additionalProperties": False,
    "properties": {"test_size": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "seed": {"type": "integer"},
                   "train_size": {"type": "integer", "minimum": 1}, "label_noise": {"type": "number", "minimum": 0, "maximum": 1}},
}
