"""What the benchmark scripts share: stopping the clock honestly and printing per-round ratios."""
from __future__ import annotations

import statistics

import torch


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that a clock stopped next measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def ratio_line(name: str, ratios: list[float], target: float, extra: str, width: int = 34) -> str:
    """One row: the median of the per-round ratios, their spread, ``extra``, and whether the median meets ``target``."""
    median = statistics.median(ratios)
    spread = f"{min(ratios):.3f}–{max(ratios):.3f}"
    return f"{name:<{width}} {median:>7.3f} {spread:>13}  {extra}  {'ok' if median <= target else 'OVER TARGET'} (≤ {target})"
