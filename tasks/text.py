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


def tokens(tokenizer, texts: list[str], max_length: int, **kwargs) -> dict[str, list]:
    """Token ids (and token type ids, where the tokenizer makes them) per text, truncated, unpadded.

    ``kwargs`` go to the tokenizer (e.g. ``add_special_tokens=False``).
    """
    encoded = tokenizer(texts, truncation=True, max_length=max_length, **kwargs)
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
    """``text`` with the first occurrences of ``first`` and ``second`` (outside ``first``'s) wrapped in their markers."""
    found = []
    start = text.find(first)
    if start >= 0:
        found.append((start, start + len(first)))
    taken = found[0] if found else (0, 0)
    position = text.find(second)
    while position >= 0 and position < taken[1] and position + len(second) > taken[0]:
        position = text.find(second, position + 1)
    spans = [found[0] if found else None, (position, position + len(second)) if position >= 0 else None]
    return mark_spans(text, spans, markers)


def mark_spans(text: str, spans, markers) -> str:
    """``text`` with each ``(begin, end)`` span (None: not marked) wrapped in its marker pair.

    Spans may overlap: each marker goes in at its own offset, later offsets first.
    """
    inserts = []
    for order, (span, (left, right)) in enumerate(zip(spans, markers)):
        if span is not None:
            inserts += [(span[1], 0, -order, right), (span[0], 1, -order, left)]
    for position, _, _, marker in sorted(inserts, reverse=True):
        text = text[:position] + marker + text[position:]
    return text
