"""Unified deletion sets: class-stratified, nested over ratios, reproducible from a seed."""
from __future__ import annotations

import hashlib

import numpy as np


def deletion_order(n: int, strata: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded order of ``range(n)`` whose every prefix is class-stratified.

    Each class is shuffled on its own; its k-th member gets the rank (k + u) / n_class
    with u uniform in [0, 1), and the examples are sorted by rank. The first r·n
    examples of the order then hold about r of every class, and D_f(r) ⊂ D_f(r') for r < r'.
    """
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    rank = np.empty(n, dtype=np.float64)
    for value in np.unique(strata):
        members = np.flatnonzero(strata == value)
        shuffled = rng.permutation(members)
        rank[shuffled] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return np.argsort(rank, kind="stable")


def forget_indices(n: int, strata: np.ndarray | None, ratio: float, seed: int) -> np.ndarray:
    """The sorted training indices of D_f for a deletion ``ratio`` (round(ratio·n) examples)."""
    if not 0 < ratio < 1:
        raise ValueError(f"deletion ratio must lie in (0, 1), got {ratio}")
    count = max(1, round(ratio * n))
    return np.sort(deletion_order(n, strata, seed)[:count])


def indices_sha256(indices: np.ndarray) -> str:
    """SHA-256 of the sorted indices written as decimal numbers joined by commas."""
    text = ",".join(str(int(i)) for i in np.sort(indices))
    return hashlib.sha256(text.encode()).hexdigest()
