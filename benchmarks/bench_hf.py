"""Unlearning examples per second: the harness against a plain PyTorch loop, on Hugging Face models.

Both sides run RandLabel's optimiser steps (cross-entropy on D_f ∪ D_r, D_f relabelled)
on the same original model, the same examples, batch size and step count, interleaved
round by round in one process so that machine noise hits both alike. The plain loop
is what a researcher writes by hand: pre-tokenized ids padded per batch, or image
tensors already normalised, a DataLoader, forward, backward, step.

Setups:
- ``tiny`` (default): the test fixtures, a tiny BERT on IMDB and a tiny ViT on CIFAR-100;
- ``real-size``: bert-base-uncased and ResNet-18 (random weights from their configs) on
  synthetic inputs of the real shapes (512-token reviews, 224×224 images); for a GPU.

    python benchmarks/bench_hf.py [--setup tiny|real-size] [--rounds 5] [--device auto]
"""
from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="mubench-bench-hub-")  # before huggingface_hub loads
os.environ["MUBENCH_HOME"] = tempfile.mkdtemp(prefix="mubench-bench-home-")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402, F401  imported by torch's optimisers on first use: before either side is timed
import torch.nn.functional as F  # noqa: E402

from mubench.api.registry import Registry  # noqa: E402
from mubench.harness import Prepared  # noqa: E402
from mubench.loop import autocast, make_optimizer, resolve_device, resolve_precision  # noqa: E402
from mubench.tasks.classification import pixels  # noqa: E402
from mubench.tasks.text import pad  # noqa: E402

TARGET = 1.15


def tiny_setup(root: Path) -> dict:
    """The test fixtures: {task: data folder}."""
    from fixtures import images, text

    images.publish_models()
    text.publish_models("imdb")
    return {"imdb": text.imdb(root / "imdb", n_train=400, n_test=40),
            "cifar100": images.cifar100(root / "cifar100", n_train=384, n_test=48)}


def real_size_setup(root: Path) -> dict:
    """bert-base and ResNet-18 at their real sizes (random weights) on synthetic data of the real shapes."""
    import datasets
    import transformers as t
    from fixtures import images, text
    from fixtures.hub import publish

    tokenizer = text.tokenizer("bert")
    publish("google-bert/bert-base-uncased", t.BertModel(t.BertConfig(vocab_size=len(tokenizer))), tokenizer)
    resnet = t.ResNetConfig(depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], layer_type="basic")
    publish("microsoft/resnet-18", t.ResNetModel(resnet), t.ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=224 / 256))
    rng = np.random.default_rng(0)
    words = text.vocabulary()[5:]
    reviews = [" ".join(rng.choice(words, 600)) for _ in range(512)]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    imdb = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"text": reviews[:n], "label": [i % 2 for i in range(n)]}, features=features)
        for split, n in (("train", 512), ("test", 32))})
    imdb.save_to_disk(root / "imdb")
    return {"imdb": root / "imdb", "cifar100": images.cifar100(root / "cifar100", n_train=768, n_test=48)}


MODELS = {"tiny": {"imdb": "bert-base", "cifar100": "vit-base"}, "real-size": {"imdb": "bert-base", "cifar100": "resnet-18"}}


def harness_seconds(prepared, original, args, device, precision) -> tuple[float, int]:
    ctx = prepared.context(copy.deepcopy(original), seed=0, device=device, precision=precision)
    report = Registry().method("randlabel")(ctx, args).unlearn()
    return report.seconds, report.steps


def plain_batches(prepared, task: str, batch_size: int, device):
    """Plain inputs made once, up front: per-batch padded ids, or normalised pixel tensors."""
    examples = prepared.train.__getitems__(list(range(len(prepared.train))))
    labels = torch.as_tensor(np.asarray(examples["labels"]))
    forget = torch.zeros(len(labels), dtype=torch.bool)
    forget[torch.as_tensor(prepared.forget)] = True
    if task == "imdb":
        ids = examples["input_ids"]
        def inputs_of(rows):
            chosen = [ids[i] for i in rows.tolist()]
            return {"input_ids": pad(chosen, 0), "attention_mask": pad([np.ones(len(x), np.int64) for x in chosen], 0)}

        return inputs_of, labels, forget
    values = pixels(torch.from_numpy(np.stack(examples["pixel_values"])), prepared.task.processor)
    return lambda rows: {"pixel_values": values[rows]}, labels, forget


def plain_seconds(prepared, original, args, task, device, precision) -> tuple[float, int]:
    model = copy.deepcopy(original).train()
    inputs_of, labels, forget = plain_batches(prepared, task, args["batch_size"], device)
    optimizer = make_optimizer(model.parameters(), args["optimizer"], args["lr"], args["momentum"], args["weight_decay"])
    generator = torch.Generator().manual_seed(0)
    k = len(prepared.task.label_names)
    steps = 0
    start = time.perf_counter()
    for _ in range(args["epochs"]):
        order = torch.randperm(len(labels), generator=generator)
        for rows in order.split(args["batch_size"]):
            inputs = {key: value.to(device) for key, value in inputs_of(rows).items()}
            y, is_forget = labels[rows].to(device), forget[rows].to(device)
            wrong = (y + torch.randint(1, k, y.shape, generator=generator).to(device)) % k
            with autocast(device, precision):
                loss = F.cross_entropy(model(**inputs).logits, torch.where(is_forget, wrong, y))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=["tiny", "real-size"], default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(options.device)
    precision = resolve_precision("auto", device)
    root = Path(tempfile.mkdtemp(prefix="mubench-bench-data-"))
    data = (tiny_setup if options.setup == "tiny" else real_size_setup)(root)
    registry = Registry()
    print(f"setup {options.setup}, device {device} ({precision}), RandLabel, {options.rounds} interleaved rounds")
    print(f"{'task/model':<22} {'steps':>6} {'harness ex/s':>13} {'plain ex/s':>11} {'time ratio':>11}  target ≤ {TARGET}")
    for task, model in MODELS[options.setup].items():
        prepared = Prepared(registry, task, model, 0.05, data[task])
        prepared.load()
        original = prepared.original(device, precision).model
        args = registry.method("randlabel").resolve_args(prepared.card, {"epochs": options.epochs})
        harness_seconds(prepared, original, args, device, precision)  # warm-up, both paths
        plain_seconds(prepared, original, args, task, device, precision)
        harness, plain = [], []
        for _ in range(options.rounds):
            seconds, steps = harness_seconds(prepared, original, args, device, precision)
            harness.append(seconds)
            seconds, plain_steps = plain_seconds(prepared, original, args, task, device, precision)
            plain.append(seconds)
            assert steps == plain_steps, (steps, plain_steps)
        examples = len(prepared.train) * options.epochs
        ratio = statistics.median(harness) / statistics.median(plain)
        print(f"{task + '/' + model:<22} {steps:>6} {examples / statistics.median(harness):>13.1f} "
              f"{examples / statistics.median(plain):>11.1f} {ratio:>11.3f}  {'ok' if ratio <= TARGET else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
