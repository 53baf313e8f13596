"""Classification task types: one class label per example, accuracy as the metric."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mubench.api import TaskType, TensorExamples


class ClassificationTask(TaskType):
    """One class label per example (column role ``label``); cross-entropy; accuracy.

    Corrupting targets gives D_f examples a wrong label: ``shift`` is (y + 1) mod K
    as in MU-Bench, ``random`` a uniformly drawn other class each time.
    """

    metric = "acc"

    def prepare(self, train) -> None:
        feature = train.features[self.column("label")]
        names = getattr(feature, "names", None)
        self.num_labels = len(names) if names else int(max(train[self.column("label")])) + 1

    def strata(self, split) -> np.ndarray:
        return np.asarray(split[self.column("label")])

    def model_kwargs(self) -> dict:
        return {"num_labels": self.num_labels}

    def loss(self, logits, inputs):
        return F.cross_entropy(logits, inputs["labels"], reduction="none")

    def relabel(self, inputs, forget, mode, generator):
        labels = inputs["labels"]
        if mode == "shift":
            offset = torch.ones_like(labels)
        else:
            offset = torch.randint(1, self.num_labels, labels.shape, generator=generator).to(labels.device)
        wrong = (labels + offset) % self.num_labels
        return {**inputs, "labels": torch.where(forget, wrong, labels)}

    def eval_outputs(self, logits, inputs):
        labels = inputs["labels"]
        true = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]
        return {"loss": -true, "confidence": true.exp(), "correct": (logits.argmax(-1) == labels).float(), "stratum": labels}

    def metrics(self, outputs):
        return {"acc": float(outputs["correct"].mean())}

    @property
    def chance(self) -> float:
        return 1.0 / self.num_labels


class ImageClassificationTask(ClassificationTask):
    """Images (column role ``image``: arrays or PIL images, grey or RGB) to class labels."""

    name = "image_classification"

    def prepare(self, train) -> None:
        super().prepare(train)
        first = np.asarray(train[0][self.column("image")])
        self.in_channels = 1 if first.ndim == 2 else first.shape[-1]

    def model_kwargs(self) -> dict:
        return {**super().model_kwargs(), "in_channels": self.in_channels}

    def encode(self, split):
        images = np.asarray(split.with_format("numpy")[self.column("image")])
        pixels = torch.as_tensor(images, dtype=torch.float32)
        if images.dtype == np.uint8:
            pixels /= 255.0
        pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
        labels = torch.as_tensor(np.asarray(split[self.column("label")]), dtype=torch.long)
        return TensorExamples(pixel_values=pixels.contiguous(), labels=labels)

    def forward(self, model, inputs):
        out = model(inputs["pixel_values"])
        return getattr(out, "logits", out)
