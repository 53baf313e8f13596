"""Text classification (IMDB) and relation classification with marked entity mentions (DDI-2013)."""
from __future__ import annotations

import numpy as np
import torch

from mubench.tasks.classification import ClassificationTask, stack

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def pad(items: list, value: int) -> torch.Tensor:
    """1-D integer arrays padded on the right to the longest of the batch."""
    out = np.full((len(items), max(len(x) for x in items)), value, dtype=np.int64)
    for row, x in zip(out, items):
        row[:len(x)] = x
    return torch.from_numpy(out)


def tokens(tokenizer, texts: list[str], max_length: int) -> dict[str, list]:
    """Token ids (and token type ids, where the tokenizer makes them) per text, truncated, unpadded."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return {key: [np.asarray(x, dtype=np.int32) for x in encoded[key]] for key in ("input_ids", "token_type_ids") if key in encoded}


def padded_tokens(items: dict, pad_id: int) -> dict[str, torch.Tensor]:
    """A batch's token ids padded to its longest text, with the attention mask (and token type ids)."""
    ids = items["input_ids"]
    batch = {"input_ids": pad(ids, pad_id), "attention_mask": pad([np.ones(len(x), np.int64) for x in ids], 0)}
    if "token_type_ids" in items:
        batch["token_type_ids"] = pad(items["token_type_ids"], 0)
    return batch


class TextClassificationTask(ClassificationTask):
    """Text (column role ``text``) to class labels, tokenized by the family's tokenizer.

    ``dataset.options.max_length`` (default 512) truncates; batches are padded to
    their longest sequence.
    """

    name = "text_classification"
    auto_class = "AutoModelForSequenceClassification"
    processor_class = "AutoTokenizer"

    def texts(self, batch) -> list[str]:
        """The model's input text for each example of a raw batch."""
        return list(batch[self.column("text")])

    def preprocess(self, batch):
        max_length = self.card.dataset.get("options", {}).get("max_length", 512)
        return tokens(self.processor, self.texts(batch), max_length) | {"labels": self.targets(batch[self.column("label")])}

    def collate(self, items):
        return padded_tokens(items, self.processor.pad_token_id or 0) | {"labels": stack(items["labels"])}

    def forward(self, model, inputs):
        return model(**{k: inputs[k] for k in MODEL_INPUTS if k in inputs}).logits


class RelationClassificationTask(TextClassificationTask):
    """The relation between two entity mentions of a sentence (DDI-2013's drug–drug interactions).

    With column roles ``entity1`` and ``entity2``, the mentions are marked in the text
    as ``<< drug1 >>`` and ``[[ drug2 ]]`` (first occurrences; the second entity's
    mention is searched outside the first's); without them, the text is taken as
    already marked.
    """

    name = "relation_classification"
    markers = (("<< ", " >>"), ("[[ ", " ]]"))

    def texts(self, batch) -> list[str]:
        texts = super().texts(batch)
        if "entity1" not in self.columns:
            return texts
        pairs = zip(batch[self.column("entity1")], batch[self.column("entity2")])
        return [mark(text, first, second, self.markers) for text, (first, second) in zip(texts, pairs)]


def mark(text: str, first: str, second: str, markers) -> str:
    """``text`` with the spans of ``first`` and ``second`` wrapped in their markers."""
    spans = []
    start = text.find(first)
    if start >= 0:
        spans.append((start, start + len(first), markers[0]))
    taken = spans[0][:2] if spans else (0, 0)
    position = text.find(second)
    while position >= 0 and position < taken[1] and position + len(second) > taken[0]:
        position = text.find(second, position + 1)
    if position >= 0:
        spans.append((position, position + len(second), markers[1]))
    for begin, end, (left, right) in sorted(spans, reverse=True):
        text = text[:begin] + left + text[begin:end] + right + text[end:]
    return text
