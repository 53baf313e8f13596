"""The harness's unlearning phase against a plain PyTorch loop doing the same optimiser steps.

Both run on the same original model (the digits CNN), the same data tensors, the same
hyperparameters and the same number of steps, interleaved round by round in one process
so that machine noise hits both alike. Prints median seconds and the ratio per method.

    python benchmarks/bench_loop.py [--rounds 5] [--methods randlabel neggrad] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch
import torch._dynamo  # noqa: F401  torch's optimisers import it on first use (seconds): before either side is timed
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mubench.api.registry import Registry
from mubench.harness import Prepared
from mubench.loop import make_optimizer, resolve_device

TARGET = 1.15


def harness_seconds(method_cls, args, prepared, original, device) -> tuple[float, int]:
    ctx = prepared.context(copy.deepcopy(original), seed=0, device=device, precision="fp32")
    report = method_cls(ctx, args).unlearn()
    return report.seconds, report.steps


def plain_seconds(method: str, args, prepared, original, device) -> tuple[float, int]:
    """What a researcher would write by hand: TensorDataset, DataLoader, CE, backward, step."""
    model = copy.deepcopy(original).train()
    tensors = prepared.train.tensors
    forget = torch.zeros(len(tensors["labels"]), dtype=torch.bool)
    forget[torch.as_tensor(prepared.forget)] = True
    rows = forget.nonzero()[:, 0] if method == "neggrad" else torch.arange(len(forget))
    dataset = TensorDataset(tensors["pixel_values"][rows], tensors["labels"][rows], forget[rows])
    loader = DataLoader(dataset, batch_size=args["batch_size"], shuffle=True, generator=torch.Generator().manual_seed(0))
    optimizer = make_optimizer(model.parameters(), args["optimizer"], args["lr"], args["momentum"], args["weight_decay"])
    generator = torch.Generator().manual_seed(0)
    steps = 0
    start = time.perf_counter()
    for _ in range(args["epochs"]):
        for x, y, is_forget in loader:
            x, y, is_forget = x.to(device), y.to(device), is_forget.to(device)
            if method == "neggrad":
                loss = -F.cross_entropy(model(x), y)
            else:
                wrong = (y + torch.randint(1, 10, y.shape, generator=generator).to(device)) % 10
                loss = F.cross_entropy(model(x), torch.where(is_forget, wrong, y))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--methods", nargs="+", default=["randlabel", "neggrad"], choices=["randlabel", "neggrad"])
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(options.device)
    registry = Registry()
    prepared = Prepared(registry, "digits", None, 0.05)
    prepared.load()
    original = prepared.original(device, "fp32").model
    print(f"digits CNN, |D_f| = {len(prepared.forget)}, device {device}, {options.rounds} interleaved rounds")
    print(f"{'method':<10} {'steps':>6} {'harness s':>10} {'plain s':>10} {'ratio':>7}  target ≤ {TARGET}")
    for method in options.methods:
        method_cls = registry.method(method)
        args = method_cls.resolve_args(prepared.card)
        harness_seconds(method_cls, args, prepared, original, device)  # warm-up, both paths
        plain_seconds(method, args, prepared, original, device)
        harness, plain = [], []
        for _ in range(options.rounds):
            seconds, steps = harness_seconds(method_cls, args, prepared, original, device)
            harness.append(seconds)
            seconds, plain_steps = plain_seconds(method, args, prepared, original, device)
            plain.append(seconds)
            assert steps == plain_steps, (steps, plain_steps)
        ratio = statistics.median(harness) / statistics.median(plain)
        print(f"{method:<10} {steps:>6} {statistics.median(harness):>10.3f} {statistics.median(plain):>10.3f} "
              f"{ratio:>7.3f}  {'ok' if ratio <= TARGET else 'OVER TARGET'}")


if __name__ == "__main__":
    main()
