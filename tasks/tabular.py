"""Tabular classification: a vector of numeric features per example, z-scored with the training split's statistics.

The built-in cards read scikit-learn's bundled tables (iris, wine, breast cancer) through the loader
``sklearn_tabular``; any ``datasets`` source with one list-of-numbers column (role ``features``) and a label works too.
"""
from __future__ import annotations

import numpy as np
import torch

from mubench.api import TensorExamples
from mubench.errors import UserError
from mubench.tasks.classification import ClassificationTask

SKLEARN_TABLES = {"iris": "load_iris", "wine": "load_wine", "breast_cancer": "load_breast_cancer"}


class TabularClassificationTask(ClassificationTask):
    """Feature vectors (column role ``features``: a fixed-length list of numbers) to class labels.

    :meth:`prepare` takes each feature's mean and standard deviation over the whole training split (D_f ∪ D_r, as θ₀
    saw it; a constant feature keeps a scale of 1), and every split is standardised with them. Architectures are
    built with ``in_features`` and ``num_labels``.
    """

    name = "tabular_classification"
    in_features: int | None = None

    def prepare(self, train) -> None:
        super().prepare(train)
        values = self.matrix(train)
        self.mean, scale = values.mean(axis=0), values.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        self.in_features = values.shape[1]

    def matrix(self, split) -> np.ndarray:
        """The split's ``features`` column as a float64 ``[examples, features]`` array."""
        values = np.asarray(split.with_format("numpy")[self.column("features")], dtype=np.float64)
        if values.ndim != 2:
            raise UserError(f"task '{self.card.name}': column '{self.column('features')}' must hold one list of numbers "
                            f"of the same length per example, got an array of shape {values.shape}")
        return values

    def model_kwargs(self) -> dict:
        """The head's labels, and ``in_features`` once :meth:`prepare` has seen the training split (before: the card's
        ``dataset.num_features``, which sizes models for ``mubench list models``)."""
        kwargs = super().model_kwargs()
        in_features = self.in_features or self.card.dataset.get("num_features")
        return kwargs if in_features is None else kwargs | {"in_features": in_features}

    def encode(self, split):
        features = torch.as_tensor((self.matrix(split) - self.mean) / self.scale, dtype=torch.float32)
        return TensorExamples(features=features, labels=torch.as_tensor(self.targets(split[self.column("label")])))

    def forward(self, model, inputs):
        return model(inputs["features"])


def load_sklearn_table(spec: dict):
    """One of scikit-learn's bundled tables (``options.dataset``: iris, wine or breast_cancer), split train/test
    stratified (``options.test_size``, default 0.2, and ``options.seed``, default 0); columns ``features`` (float32
    list) and ``label`` (ClassLabel with the table's class names)."""
    import datasets
    import sklearn.datasets
    from sklearn.model_selection import train_test_split

    options = spec.get("options", {})
    table = getattr(sklearn.datasets, SKLEARN_TABLES[options["dataset"]])()
    features = datasets.Features({
        "features": datasets.List(datasets.Value("float32"), length=table.data.shape[1]),
        "label": datasets.ClassLabel(names=[str(name) for name in table.target_names]),
    })
    train, test = train_test_split(np.arange(len(table.target)), test_size=options.get("test_size", 0.2),
                                   stratify=table.target, random_state=options.get("seed", 0))
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({"features": table.data[idx].astype(np.float32), "label": table.target[idx]},
                                         features=features)
        for name, idx in (("train", train), ("test", test))
    })


load_sklearn_table.options_schema = {
    "type": "object", "required": ["dataset"], "additionalProperties": False,
    "properties": {"dataset": {"enum": sorted(SKLEARN_TABLES)},
                   "test_size": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                   "seed": {"type": "integer"}},
}
