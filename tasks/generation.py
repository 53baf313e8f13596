"""Text generation: a source text (or a prompt built from an example) to a target text.

``seq2seq_generation`` feeds encoder-decoder models (T5: SAMSum); ``causal_generation``
feeds decoder-only language models (Llama-class: BioFact). Both train and score with
the per-token NLL of the target (padding and prompt excluded), distil per token, and
generate for evaluation with the card's ``generation`` settings. Records carry the
generated and reference texts, per-token log-probabilities (Min-K%), teacher-forced
token hits (extraction strength) and each example's ROUGE ``score`` (knowledge gap).

Card settings: ``dataset.columns`` roles ``source`` and ``target``, or
``dataset.options.prompt`` (a template over the example's columns, e.g. ``"Tell me a
bio of {name}."``) instead of ``source``; ``dataset.options`` ``prefix`` (seq2seq),
``max_source_length`` and ``max_target_length``; ``generation`` ``max_new_tokens``,
``num_beams``, ``use_cache`` and ``score`` (the primary metric: ``rougeL``,
``rougeL_recall``, …). A family's ``prompt_format`` param wraps the prompt in its
instruction template (``"### Instruction:\\n{prompt}\\n\\n### Response:\\n"``).
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from mubench.api import ArrowExamples, TaskType
from mubench.api.losses import IGNORE, label_logprobs, sequence_nll, token_kl
from mubench.metrics import rouge_scores
from mubench.tasks.pretrained import load_processor
from mubench.tasks.text import pad, padded_tokens, tokens

GENERATION = {"max_new_tokens": 64, "num_beams": 1, "use_cache": True, "score": "rougeL"}
SCORES = {"rouge1": ("rouge1", "fmeasure"), "rouge2": ("rouge2", "fmeasure"), "rougeL": ("rougeL", "fmeasure"),
          "rougeLsum": ("rougeLsum", "fmeasure"), "rougeL_recall": ("rougeL", "recall")}


class TextGenerationTask(TaskType):
    """Base of the generative text task types (see the module's docstring)."""

    overall = "generation"
    output = "token_logits"
    records = frozenset({"loss", "confidence", "score", "generation", "reference", "token_logprobs", "token_correct"})
    auto_class: ClassVar[str] = ""
    processor_class = "AutoTokenizer"
    processor = None

    def __init__(self, card):
        super().__init__(card)
        self.generation = GENERATION | card.data.get("generation", {})
        self.metric = self.generation["score"]
        self.prompt_format = "{prompt}"

    @property
    def options(self) -> dict:
        return self.card.dataset.get("options", {})

    def use_model(self, params: dict) -> None:
        self.processor, self.processor_source = load_processor(self.processor_class, params)
        self.prompt_format = params.get("prompt_format", "{prompt}")
        if self.processor is not None and self.processor.pad_token_id is None:
            self.processor.pad_token = self.processor.eos_token

    def sources(self, batch: dict) -> list[str]:
        """The model's input text per raw example: the card's prompt template over its columns, or its ``source`` column."""
        template = self.options.get("prompt")
        if template is None:
            return list(batch[self.column("source")])
        return [template.format(**dict(zip(batch, row))) for row in zip(*batch.values())]

    def preprocess_key(self) -> dict:
        return {"task_type": self.name, "processor": self.processor_source, "columns": self.columns,
                "options": self.options, "prompt_format": self.prompt_format}

    def encode(self, split):
        return ArrowExamples(split)

    @property
    def pad_id(self) -> int:
        return self.processor.pad_token_id

    def loss(self, logits, inputs):
        return sequence_nll(logits, inputs["labels"])

    def distill(self, student, teacher, inputs, temperature=1.0):
        return token_kl(student, teacher, inputs["labels"], temperature)

    def relabel(self, inputs, forget, mode, generator):
        """D_f examples take the target of another example (MU-Bench's RandLabel for generation).

        ``random`` and ``random_wrong``: a D_r example of the batch drawn with
        ``generator`` (any other example when the batch has no D_r); ``shift``: the
        next example of the batch.
        """
        rows = forget.nonzero()[:, 0].cpu()
        if len(rows) == 0:
            return inputs
        n = len(forget)
        if mode == "shift":
            donors = (rows + 1) % n
        else:
            pool = (~forget).nonzero()[:, 0].cpu()
            if len(pool) == 0:
                pool = torch.arange(n)
            donors = pool[torch.randint(len(pool), (len(rows),), generator=generator)]
        return self.with_targets(inputs, rows.tolist(), donors.tolist())

    def with_targets(self, inputs: dict, rows: list[int], donors: list[int]) -> dict:
        """``inputs`` where example ``rows[i]`` has the target of example ``donors[i]``."""
        raise NotImplementedError

    def target_ids(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's token ids as a target (truncated to ``max_target_length``; EOS-ended for decoder-only models)."""
        raise NotImplementedError

    def with_target_texts(self, inputs: dict, texts: list[str]) -> dict:
        """``inputs`` where every example's target is the matching text (IdkDPO's refusal answers)."""
        raise NotImplementedError

    def target_positions(self, inputs: dict) -> torch.Tensor:
        """``[batch, positions]``: the positions of the model's hidden states (the decoder's for encoder-decoders) that
        hold a target token, as OpenUnlearning's RMU masks them (``labels != -100``)."""
        raise NotImplementedError

    def generate(self, model, inputs: dict) -> list[str]:
        """Greedy (or beam) generations for the batch, as text."""
        raise NotImplementedError

    def generate_kwargs(self) -> dict:
        settings = self.generation
        return {"max_new_tokens": settings["max_new_tokens"], "num_beams": settings["num_beams"], "do_sample": False,
                "use_cache": settings["use_cache"], "pad_token_id": self.pad_id}

    def evaluate_batch(self, model, inputs, needs):
        """Teacher-forced statistics of the reference (a forward pass) and generations, each only when needed."""
        records = {}
        if needs & {"loss", "confidence", "token_logprobs", "token_correct"}:
            logits = self.forward(model, inputs)
            labels = inputs["labels"]
            logprobs = label_logprobs(logits, labels)
            mask = labels != IGNORE
            nll = -logprobs.sum(1) / mask.sum(1).clamp_min(1)
            records |= {"loss": nll, "confidence": (-nll).exp()}
            if "token_logprobs" in needs:
                records["token_logprobs"] = [row[m].cpu().numpy() for row, m in zip(logprobs, mask)]
            if "token_correct" in needs:
                hits = logits.argmax(-1) == labels
                records["token_correct"] = [row[m].cpu().numpy() for row, m in zip(hits, mask)]
        if needs & {"generation", "reference", "score"}:
            texts = self.generate(model, inputs)
            records |= {"generation": texts, "reference": list(inputs["reference"])}
            if "score" in needs:
                kind, measure = SCORES[self.metric]
                records["score"] = torch.as_tensor(rouge_scores(texts, records["reference"], kind, measure))
        return records


class Seq2SeqGenerationTask(TextGenerationTask):
    """Encoder-decoder generation (T5 on SAMSum): ``prefix + source`` → target."""

    name = "seq2seq_generation"
    auto_class = "AutoModelForSeq2SeqLM"

    def preprocess(self, batch):
        sources = [self.options.get("prefix", "") + text for text in self.sources(batch)]
        targets = list(batch[self.column("target")])
        return {"input_ids": tokens(self.processor, sources, self.options.get("max_source_length", 512))["input_ids"],
                "target_ids": self.target_ids(targets),
                "reference": targets}

    def collate(self, items):
        return padded_tokens({"input_ids": items["input_ids"]}, self.pad_id) | {
            "labels": pad(items["target_ids"], IGNORE), "reference": list(items["reference"])}

    def forward(self, model, inputs):
        decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=inputs["labels"])
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     decoder_input_ids=decoder_input_ids).logits

    def with_targets(self, inputs, rows, donors):
        labels = inputs["labels"].clone()
        labels[rows] = inputs["labels"][donors]
        return {**inputs, "labels": labels}

    def target_ids(self, texts):
        return tokens(self.processor, texts, self.options.get("max_target_length", 128))["input_ids"]

    def with_target_texts(self, inputs, texts):
        return {**inputs, "labels": pad(self.target_ids(texts), IGNORE).to(inputs["labels"].device)}

    def target_positions(self, inputs):
        return inputs["labels"] != IGNORE

    def generate(self, model, inputs):
        out = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **self.generate_kwargs())
        return self.processor.batch_decode(out, skip_special_tokens=True)


class CausalGenerationTask(TextGenerationTask):
    """Decoder-only generation (Llama-class models on BioFact): the prompt, then the target and EOS.

    Training and scoring see ``prompt + target`` right-padded, the loss on the target
    only; generation sees the prompts left-padded, as decoder-only models need.
    """

    name = "causal_generation"
    auto_class = "AutoModelForCausalLM"

    def preprocess(self, batch):
        prompts = [self.prompt_format.format(prompt=text) for text in self.sources(batch)]
        targets = list(batch[self.column("target")])
        return {"prompt_ids": tokens(self.processor, prompts, self.options.get("max_source_length", 512))["input_ids"],
                "target_ids": self.target_ids(targets), "reference": targets}

    def collate(self, items):
        prompts = [torch.from_numpy(x.astype(np.int64)) for x in items["prompt_ids"]]
        targets = [torch.from_numpy(x.astype(np.int64)) for x in items["target_ids"]]
        return self.pack(prompts, targets) | self.left_padded(prompts) | {"reference": list(items["reference"])}

    def pack(self, prompts: list[torch.Tensor], targets: list[torch.Tensor]) -> dict:
        """``prompt + target`` right-padded, with labels aligned to the logits of :meth:`forward` (next tokens, target only)."""
        width = max(len(p) + len(t) for p, t in zip(prompts, targets))
        device = prompts[0].device
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long, device=device)
        labels = torch.full((len(prompts), width), IGNORE, dtype=torch.long, device=device)
        mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
        for row, (p, t) in enumerate(zip(prompts, targets)):
            n = len(p) + len(t)
            input_ids[row, :n] = torch.cat([p, t])
            labels[row, len(p):n] = t
            mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels[:, 1:]}

    def left_padded(self, prompts: list[torch.Tensor]) -> dict:
        width = max(len(p) for p in prompts)
        prompt_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        prompt_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            prompt_ids[row, width - len(p):] = p
            prompt_mask[row, width - len(p):] = 1
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask}

    def forward(self, model, inputs):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]

    def prompts(self, inputs: dict) -> list[torch.Tensor]:
        return [ids[mask.bool()] for ids, mask in zip(inputs["prompt_ids"], inputs["prompt_mask"])]

    def with_targets(self, inputs, rows, donors):
        own = [labels[labels != IGNORE] for labels in inputs["labels"]]
        targets = list(own)
        for row, donor in zip(rows, donors):
            targets[row] = own[donor]
        return {**inputs, **self.pack(self.prompts(inputs), targets)}

    def target_ids(self, texts):
        ids = tokens(self.processor, texts, self.options.get("max_target_length", 128) - 1, add_special_tokens=False)["input_ids"]
        eos = np.asarray([self.processor.eos_token_id], dtype=np.int32)
        return [np.concatenate([x, eos]) for x in ids]

    def with_target_texts(self, inputs, texts):
        device = inputs["labels"].device
        targets = [torch.from_numpy(x.astype(np.int64)).to(device) for x in self.target_ids(texts)]
        return {**inputs, **self.pack(self.prompts(inputs), targets)}

    def target_positions(self, inputs):
        return torch.nn.functional.pad(inputs["labels"] != IGNORE, (1, 0))

    def generate(self, model, inputs):
        prompt = inputs["prompt_ids"]
        out = model.generate(input_ids=prompt, attention_mask=inputs["prompt_mask"], **self.generate_kwargs())
        return self.processor.batch_decode(out[:, prompt.shape[1]:], skip_special_tokens=True)
