"""Deletion sets: class-stratified, nested over ratios, deterministic, with a stable hash."""
import hashlib

import numpy as np
import pytest

from mubench.splits import deletion_order, forget_indices, indices_sha256

RATIOS = [r / 100 for r in range(1, 11)]
# The 5% deletion set of digits, as first published; see test_digits_deletion_set_is_stable_across_machines.
DIGITS_5PCT_SHA256 = "cc45935622d72b01735768c11beccda730eb1c054c4cba0ff0e30cfc29b79fc3"


@pytest.fixture(scope="module")
def labels():
    rng = np.random.default_rng(7)
    return rng.choice(10, size=5000, p=np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum())


def test_sizes_follow_the_ratio(labels):
    for ratio in RATIOS:
        assert len(forget_indices(len(labels), labels, ratio, seed=0)) == round(ratio * len(labels))


def test_every_ratio_is_class_stratified(labels):
    share = np.bincount(labels, minlength=10) / len(labels)
    for ratio in RATIOS:
        chosen = labels[forget_indices(len(labels), labels, ratio, seed=0)]
        counts = np.bincount(chosen, minlength=10)
        expected = share * len(chosen)
        assert np.all(np.abs(counts - expected) <= 1.5), (ratio, counts, expected)


def test_sets_are_nested(labels):
    previous = set()
    for ratio in RATIOS:
        current = set(forget_indices(len(labels), labels, ratio, seed=3).tolist())
        assert previous <= current
        previous = current


def test_deterministic_per_seed_and_different_across_seeds(labels):
    a = forget_indices(len(labels), labels, 0.05, seed=11)
    b = forget_indices(len(labels), labels, 0.05, seed=11)
    c = forget_indices(len(labels), labels, 0.05, seed=12)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_order_is_a_permutation_without_strata():
    order = deletion_order(101, None, seed=0)
    assert sorted(order.tolist()) == list(range(101))


def test_hash_is_sha256_of_sorted_decimal_indices():
    indices = np.array([30, 2, 11])
    assert indices_sha256(indices) == hashlib.sha256(b"2,11,30").hexdigest()
    assert indices_sha256(indices) == indices_sha256(np.sort(indices))


def test_digits_deletion_set_is_stable_across_machines(registry):
    """The digits D_f at 5% is pinned: a change here changes every published result."""
    from mubench.data import load_splits

    card = registry.card("digits")
    task = registry.task_type(card)
    train = load_splits(card, registry.dataset_loaders)["train"]
    task.prepare(train)
    forget = forget_indices(len(train), task.strata(train), 0.05, card.split_seed)
    assert len(forget) == 72
    assert indices_sha256(forget) == DIGITS_5PCT_SHA256


def test_bad_ratio_is_rejected():
    with pytest.raises(ValueError):
        forget_indices(10, None, 1.5, seed=0)
