"""Generation throughput and unlearning steps/s on the generative text tasks: the harness against plain loops.

Generation: the harness's evaluation (loader, collate, ``evaluate_batch`` asked for
generations only) against a plain loop of ``model.generate`` over the same examples,
the same padding, batch size and settings, decoding both. Both generate exactly
``max_new_tokens`` per example (EOS suppressed: random weights would stop at once), so
they do the same work; the share of identical generations is printed (bf16 greedy
decoding of a random model can flip near-tied tokens between two calls on a GPU).
Unlearning: NegGrad's optimiser steps through the harness against a plain loop
(DataLoader with a padding collate, ``model(..., labels=…).loss``, backward, step).
Each pair runs interleaved round by round in one process so that machine noise hits
both alike; both sync the GPU before the clock stops. Prints per-round
ratios, their median and spread, tokens/s and (on a GPU) peak memory.

Setups:
- ``tiny`` (default): the test fixtures' tiny T5 (SAMSum) and tiny Llama (BioFact);
- ``real-size``: T5 v1.1 base and a 1.1B Llama config (TinyLlama's sizes), random
  weights, on synthetic texts of SAMSum's and BioFact's shapes; for a GPU.

    python benchmarks/bench_generation.py [--setup tiny|real-size] [--rounds 5] [--device auto]
"""
from __future__ import annotations

import argparse
import copy
import json
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
from report import ratio_line, sync  # noqa: E402

from mubench.api.registry import Registry  # noqa: E402
from mubench.evaluation import Evaluator  # noqa: E402
from mubench.harness import Prepared  # noqa: E402
from mubench.loop import autocast, make_optimizer, resolve_device, resolve_precision  # noqa: E402
from mubench.tasks.text import pad  # noqa: E402

GENERATION_TARGET, UNLEARN_TARGET = 1.10, 1.15
FAMILIES = {"samsum": "t5-base", "biofact": "smollm2-360m"}


def tiny_setup(root: Path) -> dict:
    from fixtures import generation

    generation.publish_t5()
    generation.publish_llama()
    return {"samsum": generation.samsum(root / "samsum", n_train=256, n_test=64),
            "biofact": generation.biofact(root / "biofact", n_people=60)}


def real_size_setup(root: Path) -> dict:
    """T5 v1.1 base and a 1.1B Llama (random weights, 32k-word vocabularies) on synthetic texts of the real shapes."""
    from fixtures import generation

    words = [f"w{i}" for i in range(32000)]
    generation.publish_t5(words=words, family="t5-base", d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_decoder_layers=12,
                          num_heads=12)
    generation.publish_llama(words=words, family="smollm2-360m", hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                             num_attention_heads=32, num_key_value_heads=4)
    rng = np.random.default_rng(0)
    text = lambda n: " ".join(rng.choice(words, n))  # noqa: E731
    import datasets

    for split, n in (("train", 512), ("test", 128), ("validation", 8)):
        rows = [{"id": str(i), "dialogue": text(120), "summary": text(24)} for i in range(n)]
        (root / "samsum" / "samsum" / split).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(root / "samsum" / "samsum" / split / "0000.parquet")
    (root / "biofact").mkdir()
    people = [{"name": f"{text(1)} {text(1)}", "bio": text(150)} for _ in range(240)]
    (root / "biofact" / "biofact.jsonl").write_text("\n".join(json.dumps(p) for p in people))
    return {"samsum": root / "samsum", "biofact": root / "biofact"}



def harness_generation(evaluator: Evaluator, model, data) -> tuple[float, list[str]]:
    start = time.perf_counter()
    records = evaluator.records(model, data.loader("test", evaluator.batch_size, shuffle=False))
    sync(evaluator.device)
    return time.perf_counter() - start, records["generation"]


def plain_generation(task, model, examples: list[dict], batch_size: int, device, precision) -> tuple[float, list[str], int]:
    """``model.generate`` over the same token ids, padded per batch (left for a decoder-only model), decoded."""
    tok, settings = task.processor, task.generate_kwargs()
    causal = task.name == "causal_generation"
    key = "prompt_ids" if causal else "input_ids"
    texts, new_tokens = [], 0
    model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(examples), batch_size):
            chosen = [e[key] for e in examples[first:first + batch_size]]
            if causal:
                width = max(len(x) for x in chosen)
                ids = torch.tensor(np.stack([np.pad(x, (width - len(x), 0), constant_values=tok.pad_token_id) for x in chosen]),
                                   dtype=torch.long)
                mask = torch.tensor(np.stack([np.pad(np.ones(len(x)), (width - len(x), 0)) for x in chosen]), dtype=torch.long)
            else:
                ids, mask = pad(chosen, tok.pad_token_id), pad([np.ones(len(x), np.int64) for x in chosen], 0)
            ids, mask = ids.to(device), mask.to(device)
            with autocast(device, precision):
                out = model.generate(input_ids=ids, attention_mask=mask, **settings)
            out = out[:, ids.shape[1]:] if causal else out[:, 1:]  # the prompt, or T5's decoder start token
            new_tokens += out.numel()  # every example generates max_new_tokens (EOS suppressed)
            texts += tok.batch_decode(out, skip_special_tokens=True)
    sync(device)
    return time.perf_counter() - start, texts, new_tokens


def harness_unlearning(prepared, model, args, device, precision) -> tuple[float, int]:
    ctx = prepared.context(copy.deepcopy(model), seed=0, device=device, precision=precision)
    report = Registry().method("neggrad")(ctx, args).unlearn()
    sync(device)
    return report.seconds, report.steps


def plain_unlearning(prepared, model, args, device, precision) -> tuple[float, int]:
    """Gradient ascent as a researcher writes it: a DataLoader with a padding collate, the model's own loss."""
    task = prepared.task
    model = copy.deepcopy(model).train()
    examples = prepared.train.__getitems__(prepared.forget.tolist())
    rows = [dict(zip(examples, values)) for values in zip(*examples.values())]
    causal = task.name == "causal_generation"

    def collate(items):
        if causal:
            seqs = [np.concatenate([x["prompt_ids"], x["target_ids"]]) for x in items]
            labels = [np.concatenate([np.full(len(x["prompt_ids"]), -100), x["target_ids"]]) for x in items]
            return {"input_ids": pad(seqs, task.pad_id), "attention_mask": pad([np.ones(len(x), np.int64) for x in seqs], 0),
                    "labels": pad(labels, -100)}
        return {"input_ids": pad([x["input_ids"] for x in items], task.pad_id),
                "attention_mask": pad([np.ones(len(x["input_ids"]), np.int64) for x in items], 0),
                "labels": pad([x["target_ids"] for x in items], -100)}

    loader = torch.utils.data.DataLoader(rows, batch_size=args["batch_size"], shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    optimizer = make_optimizer(model.parameters(), args["optimizer"], args["lr"], args["momentum"], args["weight_decay"])
    steps = 0
    start = time.perf_counter()
    for _ in range(args["epochs"]):
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, precision):
                loss = -model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args["max_grad_norm"]) if args["max_grad_norm"] else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    sync(device)
    return time.perf_counter() - start, steps



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=["tiny", "real-size"], default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="auto")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(options.device)
    precision = resolve_precision("auto", device)
    data = (tiny_setup if options.setup == "tiny" else real_size_setup)(Path(tempfile.mkdtemp(prefix="mubench-bench-data-")))
    registry = Registry()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"setup {options.setup}, device {device} ({name}, {precision}), batch {options.batch_size}, {options.rounds} interleaved rounds")
    print(f"{'what':<34} {'ratio':>7} {'spread':>13}  (harness time / plain time, per round)")
    for task_name, family in FAMILIES.items():
        prepared = Prepared(registry, task_name, family, 0.1, data[task_name])
        prepared.load()
        torch.manual_seed(0)
        model = prepared.family.build().to(device)
        n_params = sum(p.numel() for p in model.parameters())
        task = prepared.task
        evaluator = Evaluator(task, [], device, precision, options.batch_size)
        evaluator.needs = frozenset({"generation"})
        test = prepared.data(device)
        examples = prepared.test.__getitems__(list(range(len(prepared.test))))
        examples = [dict(zip(examples, values)) for values in zip(*examples.values())]
        model.generation_config.min_new_tokens = task.generation["max_new_tokens"]
        harness_generation(evaluator, model, test)  # warm-up, both paths
        plain_generation(task, model, examples, options.batch_size, device, precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ratios, plain_times, same = [], [], []
        for _ in range(options.rounds):
            seconds, ours = harness_generation(evaluator, model, test)
            plain, theirs, tokens = plain_generation(task, model, examples, options.batch_size, device, precision)
            same.append(np.mean([a == b for a, b in zip(ours, theirs)]))
            ratios.append(seconds / plain)
            plain_times.append(plain)
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        rate = tokens / statistics.median(plain_times)
        print(ratio_line(f"{task_name} generate ({n_params / 1e6:.0f}M)", ratios, GENERATION_TARGET,
                   f"{rate:,.0f} new tokens/s plain, {rate / statistics.median(ratios):,.0f} harness, "
                   f"{min(same):.0%} identical{memory}"))

        overrides = {"epochs": options.epochs, "batch_size": min(8, len(prepared.forget))}
        args = registry.method("neggrad").resolve_args(prepared.card, overrides)
        harness_unlearning(prepared, model, args, device, precision)
        plain_unlearning(prepared, model, args, device, precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ratios, steps_rate = [], []
        for _ in range(options.rounds):
            seconds, steps = harness_unlearning(prepared, model, args, device, precision)
            plain, plain_steps = plain_unlearning(prepared, model, args, device, precision)
            assert steps == plain_steps, (steps, plain_steps)
            ratios.append(seconds / plain)
            steps_rate.append(steps / seconds)
        memory = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
        print(ratio_line(f"{task_name} neggrad ({steps} steps)", ratios, UNLEARN_TARGET,
                   f"{statistics.median(steps_rate):.1f} steps/s harness{memory}"))


if __name__ == "__main__":
    main()
