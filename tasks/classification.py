"""Classification task types: one class label per example, cross-entropy, accuracy.

The label set comes from the dataset's ``ClassLabel`` names, or from the card's
``dataset.labels`` (which may also merge classes: every value not listed maps to
``dataset.other_label``, e.g. Speech Commands' ``_unknown_``).
"""
from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mubench.api import ArrowExamples, TaskType, TensorExamples
from mubench.errors import UserError
from mubench.tasks.pretrained import load_processor


class ClassificationTask(TaskType):
    """One class label per example (column role ``label``); cross-entropy; accuracy.

    Corrupting targets gives D_f examples new labels: ``random`` draws uniformly over
    all K classes each time (SalUn's and Deep Unlearn's code: the true class comes back
    with probability 1/K), ``random_wrong`` uniformly over the K − 1 other classes, and
    ``shift`` is (y + 1) mod K as in MU-Bench's code.

    Subclasses fed by Hugging Face models name their ``auto_class`` and
    ``processor_class``; :func:`~mubench.tasks.pretrained.load_processor` loads it.
    """

    metric = "acc"
    auto_class: ClassVar[str] = ""
    processor_class: ClassVar[str] = ""
    processor = None

    def use_model(self, params: dict) -> None:
        self.processor, self.processor_source = load_processor(self.processor_class, params)

    def prepare(self, train) -> None:
        feature = train.features[self.column("label")]
        data_names = getattr(feature, "names", None)
        card_names = self.card.dataset.get("labels")
        other = self.card.dataset.get("other_label")
        if card_names is None:
            names = data_names or [str(v) for v in sorted(set(train[self.column("label")]))]
        else:
            names = list(card_names)
        index = {name: i for i, name in enumerate(names)}
        raw = data_names or sorted(set(train[self.column("label")]))
        self.index = {}
        for position, value in enumerate(raw):
            name = str(value)
            if name not in index and other not in index:
                raise UserError(f"task '{self.card.name}': label {name!r} of the data is not in dataset.labels "
                                f"(set dataset.other_label to merge such labels into one class)")
            self.index[position if data_names else value] = index.get(name, index.get(other))
        self._label_names = names
        declared = self.card.dataset.get("num_labels")
        if declared is not None and declared != len(names):
            raise UserError(f"task '{self.card.name}': dataset.num_labels is {declared}, but the data has {len(names)} classes")

    @property
    def label_names(self) -> list[str]:
        """The class names, from the data once prepared, else from the card (for listing models)."""
        names = getattr(self, "_label_names", None) or self.card.dataset.get("labels")
        if names is None and self.card.dataset.get("num_labels"):
            names = [str(i) for i in range(self.card.dataset["num_labels"])]
        if names is None:
            raise UserError(f"task '{self.card.name}': its classes are unknown before the data is read "
                            f"(declare dataset.labels or dataset.num_labels in the card)")
        return names

    def targets(self, values) -> np.ndarray:
        """Class indices of raw label values (ClassLabel ids or strings)."""
        try:
            return np.asarray([self.index[v] for v in values], dtype=np.int64)
        except KeyError as e:
            raise UserError(f"task '{self.card.name}': label {e.args[0]!r} is not one of the training split's labels") from None

    def strata(self, split) -> np.ndarray:
        return self.targets(split[self.column("label")])

    def model_kwargs(self) -> dict:
        names = self.label_names
        return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}

    def preprocess_key(self) -> dict:
        return {"task_type": self.name, "processor": self.processor_source, "labels": self.label_names,
                "columns": self.columns, "options": self.card.dataset.get("options", {})}

    def encode(self, split):
        return ArrowExamples(split)

    def loss(self, logits, inputs):
        return F.cross_entropy(logits, inputs["labels"], reduction="none")

    def relabel(self, inputs, forget, mode, generator):
        labels = inputs["labels"]
        k = len(self.label_names)
        if mode == "random":
            new = torch.randint(0, k, labels.shape, generator=generator).to(labels.device)
        elif mode == "random_wrong":
            new = (labels + torch.randint(1, k, labels.shape, generator=generator).to(labels.device)) % k
        else:
            new = (labels + 1) % k
        return {**inputs, "labels": torch.where(forget, new, labels)}

    def eval_outputs(self, logits, inputs):
        labels = inputs["labels"]
        true = F.log_softmax(logits, dim=-1).gather(1, labels[:, None])[:, 0]
        correct = (logits.argmax(-1) == labels).float()
        return {"loss": -true, "confidence": true.exp(), "correct": correct, "score": correct, "stratum": labels}

    @property
    def chance(self) -> float:
        """1 / the number of classes."""
        return 1.0 / len(self.label_names)


def stack(items: list) -> torch.Tensor:
    """Equal-shaped numpy arrays (or scalars) of a batch as one tensor."""
    return torch.from_numpy(np.stack(items))


def pixels(values: torch.Tensor, processor) -> torch.Tensor:
    """uint8 pixels as the processor's normalised floats (done on the device, after the transfer)."""
    if values.dtype != torch.uint8:
        return values
    scale, shift = affine(processor, values.device)
    return torch.addcmul(shift, values.float(), scale)


@functools.cache
def affine(processor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale`` and ``shift`` with ``x·scale + shift == (x·rescale − mean) / std``."""
    rescale = float(getattr(processor, "rescale_factor", 1 / 255))
    mean, std = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
        mean, std = processor.image_mean, processor.image_std
    mean, std = torch.tensor(mean, device=device).view(-1, 1, 1), torch.tensor(std, device=device).view(-1, 1, 1)
    return rescale / std, -mean / std


def resized_uint8(processor, images, **kwargs) -> np.ndarray:
    """The processor's resized, cropped images, kept as uint8 (rescaling and normalising wait for the batch)."""
    out = processor(images, do_rescale=False, do_normalize=False, return_tensors="pt", **kwargs)["pixel_values"]
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


class ImageClassificationTask(ClassificationTask):
    """Images (column role ``image``) to class labels.

    With a Hugging Face family, images go through its image processor (resized and
    cropped once, cached as uint8, normalised on the device); with a from-scratch
    architecture they are used as they are (arrays, grey or RGB).
    """

    name = "image_classification"
    auto_class = "AutoModelForImageClassification"
    processor_class = "AutoImageProcessor"
    in_channels: int | None = None

    @property
    def preprocesses(self) -> bool:
        return self.processor is not None

    def prepare(self, train) -> None:
        super().prepare(train)
        first = np.asarray(train[0][self.column("image")])
        self.in_channels = 1 if first.ndim == 2 else first.shape[-1]

    def model_kwargs(self) -> dict:
        """The head's labels, and ``in_channels`` once :meth:`prepare` has seen an image."""
        kwargs = super().model_kwargs()
        return kwargs if self.in_channels is None else kwargs | {"in_channels": self.in_channels}

    def preprocess(self, batch):
        images = [image.convert("RGB") for image in batch[self.column("image")]]
        return {"pixel_values": resized_uint8(self.processor, images), "labels": self.targets(batch[self.column("label")])}

    def encode(self, split):
        if self.processor is not None:
            return ArrowExamples(split)
        images = np.asarray(split.with_format("numpy")[self.column("image")])
        values = torch.as_tensor(images, dtype=torch.float32)
        if images.dtype == np.uint8:
            values /= 255.0
        values = values[:, None] if values.ndim == 3 else values.permute(0, 3, 1, 2)
        labels = torch.as_tensor(self.targets(split[self.column("label")]))
        return TensorExamples(pixel_values=values.contiguous(), labels=labels)

    def collate(self, items):
        if self.processor is None:
            return items
        return {"pixel_values": stack(items["pixel_values"]), "labels": stack(items["labels"])}

    def forward(self, model, inputs):
        out = model(pixels(inputs["pixel_values"], self.processor))
        return getattr(out, "logits", out)
