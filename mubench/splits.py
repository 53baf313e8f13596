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


def chosen_classes(label_names: list[str], names: list | None, count: int | None, seed: int) -> np.ndarray:
    """Class-wise deletion's classes: the card's ``classes`` by name, else ``n_classes`` drawn with ``seed``; sorted indices."""
    if names is not None:
        unknown = [str(n) for n in names if str(n) not in label_names]
        if unknown:
            raise ValueError(f"deletion.classes names {unknown[0]!r}, which is not one of the task's classes ({', '.join(label_names)})")
        return np.sort([label_names.index(str(n)) for n in names])
    if not 0 < (count or 0) < len(label_names):
        raise ValueError(f"deletion.n_classes must lie between 1 and {len(label_names) - 1}, got {count}")
    return np.sort(np.random.default_rng(seed).choice(len(label_names), size=count, replace=False))


def indices_sha256(indices: np.ndarray) -> str:
    """SHA-256 of the sorted indices written as decimal numbers joined by commas."""
    text = ",".join(str(int(i)) for i in np.sort(indices))
    return hashlib.sha256(text.encode()).hexdigest()
