"""Deletion sets: class-stratified, nested over ratios, deterministic, with a stable hash."""
import hashlib

import numpy as np
import pytest
import yaml
from tests_support import digits_card_dict

from mubench.results import validate_result
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


def test_class_wise_deletion_forgets_whole_classes(run_digits, registry):
    """D_f is every training image of the drawn digit; the retrained model never saw it."""
    retrained, path = run_digits("retrain", task="digits_classes")
    validate_result(retrained, path, registry)
    (digit,) = retrained["split"]["forget_classes"]
    assert path.name == f"digits_classes__cnn__retrain__classes-{digit}__seed42.json"
    original, after = retrained["results"]["original"], retrained["results"]["unlearned"]
    assert original["forget_acc"] > 0.95 and original["forgotten_acc"] > 0.9
    assert after["forget_acc"] == 0.0 and after["forgotten_acc"] == 0.0 and after["test_acc"] > 0.95
    assert retrained["split"]["n_test_forgotten"] > 30 and retrained["split"]["n_forget"] > 100
    assert 0.08 < retrained["config"]["deletion_ratio"] < 0.12  # one class of ten


def test_class_wise_deletion_by_name_and_its_errors(registry, tmp_path):
    from mubench.api.registry import Registry
    from mubench.errors import UserError
    from mubench.harness import Prepared

    card = digits_card_dict() | {"task": "digits_three"}
    card["deletion"] = card["deletion"] | {"mode": "classes", "classes": ["3", "8"]}
    (tmp_path / "three.yaml").write_text(yaml.safe_dump(card))
    bad = card | {"task": "digits_eleven", "deletion": card["deletion"] | {"classes": ["11"]}}
    (tmp_path / "eleven.yaml").write_text(yaml.safe_dump(bad))
    local = Registry(include_paths=[tmp_path])
    prepared = Prepared(local, "digits_three", None, None)
    prepared.load()
    labels = prepared.train.tensors["labels"].numpy()
    assert set(np.unique(labels[prepared.forget])) == {3, 8} and (np.isin(labels, [3, 8]).sum() == len(prepared.forget))
    with pytest.raises(UserError, match="takes no --deletion-ratio"):
        Prepared(local, "digits_three", None, 0.05)
    eleven = Prepared(local, "digits_eleven", None, None)
    with pytest.raises(UserError, match="deletion.classes names '11'"):
        eleven.load()


def test_the_memorising_scenario_has_something_to_forget(run_digits, registry):
    """θ₀ memorises 300 images with 30% noisy labels; its loss attack sees D_f, and retraining gets D_f visibly wrong."""
    retrained, path = run_digits("retrain", task="digits_memorise")
    validate_result(retrained, path, registry)
    original, after = retrained["results"]["original"], retrained["results"]["unlearned"]
    assert retrained["split"]["n_train"] == 300 and retrained["split"]["n_forget"] == 60
    assert original["retain_acc"] == 1.0 and original["forget_acc"] == 1.0
    assert original["test_acc"] < 0.8  # a clear gap between training and test accuracy
    assert original["forget_mia_loss_acc"] > 0.65  # a membership signal
    assert after["forget_acc"] <= 0.8 and after["forget_mia_loss_acc"] < original["forget_mia_loss_acc"] - 0.1
