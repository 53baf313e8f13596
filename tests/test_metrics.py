"""The attacks tell a model that memorised D_f from one that never saw it; the overall score."""
import numpy as np
import pytest
import torch
from torch import nn

from mubench.data import load_splits
from mubench.evaluation import accuracy_overall
from mubench.metrics import BUILTIN, indiscernibility, loss_attack, mia_efficacy

ATTACKS = {m.name: m for m in BUILTIN if m.scope == "forget" and m.needs <= {"loss", "confidence", "score"}}


def attack_metrics(records, seed):
    return {f"forget_{name}": metric.compute(records, seed) for name, metric in ATTACKS.items()}


@pytest.fixture(scope="module")
def digits_arrays(registry):
    card = registry.card("digits")
    task = registry.task_type(card)
    splits = load_splits(card, registry.dataset_loaders)
    task.prepare(splits["train"])
    train, test = task.encode(splits["train"]), task.encode(splits["test"])
    return task, train.tensors, test.tensors


def fit(x, y, epochs=400, seed=0):
    """A wide MLP trained to zero loss on a small set: it memorises."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def stats(task, model, tensors):
    with torch.no_grad():
        out = task.evaluate_batch(model, tensors, frozenset())
    return {k: v.numpy() for k, v in out.items()}


@pytest.fixture(scope="module")
def attacked(digits_arrays):
    """Attack metrics on D_f for a model trained on D_f ∪ D_r and for one trained on D_r only.

    Every label is random, so a model can fit its training set only by memorising it
    (Zhang et al. 2017): the cleanest case of a model whose members stand out.
    """
    task, train, test = digits_arrays
    generator = torch.Generator().manual_seed(0)
    train = {**train, "labels": torch.randint(0, 10, train["labels"].shape, generator=generator)}
    test = {**test, "labels": torch.randint(0, 10, test["labels"].shape, generator=generator)}
    forget, retain = np.arange(0, 150), np.arange(150, 550)
    part = lambda idx: {k: v[idx] for k, v in train.items()}  # noqa: E731
    both = np.concatenate([forget, retain])
    memorised = fit(train["pixel_values"][both], train["labels"][both])
    never_saw = fit(train["pixel_values"][retain], train["labels"][retain])
    results = {}
    for name, model in (("memorised", memorised), ("never_saw", never_saw)):
        outputs = {"forget": stats(task, model, part(forget)), "retain": stats(task, model, part(retain)),
                   "test": stats(task, model, test)}
        results[name] = attack_metrics(outputs, seed=0)
    return results


def test_loss_attack_succeeds_more_on_the_memorising_model(attacked):
    assert attacked["memorised"]["forget_mia_loss_acc"] > 0.8
    assert abs(attacked["never_saw"]["forget_mia_loss_acc"] - 0.5) < 0.1
    assert attacked["never_saw"]["forget_mia_loss_indiscernibility"] > attacked["memorised"]["forget_mia_loss_indiscernibility"]


def test_mia_efficacy_is_higher_for_the_model_that_never_saw_d_f(attacked):
    assert attacked["memorised"]["forget_mia_efficacy"] < 0.2
    assert attacked["never_saw"]["forget_mia_efficacy"] > 0.8


def test_loss_attack_is_at_chance_on_identical_distributions():
    rng = np.random.default_rng(0)
    accuracy = loss_attack(rng.exponential(size=2000), rng.exponential(size=2000))
    assert abs(accuracy - 0.5) < 0.05


def test_loss_attack_balances_per_class():
    # D_f is all class 0 with low loss, D_test mostly class 1: balancing keeps only class 0 of each.
    forget, test = np.full(40, 0.1), np.concatenate([np.full(40, 0.1), np.full(400, 5.0)])
    accuracy = loss_attack(forget, test, np.zeros(40), np.concatenate([np.zeros(40), np.ones(400)]))
    assert abs(accuracy - 0.5) < 0.1


def test_mia_efficacy_counts_d_f_judged_non_member():
    members, non_members = np.full(100, 0.99), np.full(100, 0.2)
    assert mia_efficacy(members, non_members, np.full(10, 0.2)) == 1.0
    assert mia_efficacy(members, non_members, np.full(10, 0.99)) == 0.0


def test_attacks_survive_a_diverged_model():
    nan = np.full(50, np.nan)
    outputs = {part: {"loss": nan, "confidence": nan, "score": nan} for part in ("forget", "retain", "test")}
    metrics = attack_metrics(outputs, seed=0)
    assert all(np.isfinite(v) for v in metrics.values()), metrics


def test_indiscernibility():
    assert indiscernibility(0.5) == 1.0 and indiscernibility(1.0) == 0.0 and indiscernibility(0.0) == 0.0


def test_overall_score():
    assert accuracy_overall(test=0.9, test_original=0.9, forget=0.1, chance=0.1) == pytest.approx(1.0)
    assert accuracy_overall(test=0.9, test_original=0.9, forget=1.0, chance=0.1) == pytest.approx(2 * 0.1 / 1.1)
    assert accuracy_overall(test=0.7, test_original=0.9, forget=0.1, chance=0.1) == 0.0  # > 20% relative drop
    assert accuracy_overall(test=0.8, test_original=0.9, forget=0.1, chance=0.1) == pytest.approx(2 * 0.9 / 1.9)


def test_the_loss_attack_is_fitted_once_for_its_two_metrics_and_again_for_other_records(monkeypatch):
    from mubench import metrics

    calls = []
    real = metrics.loss_attack
    monkeypatch.setattr(metrics, "loss_attack", lambda *a, **k: calls.append(1) or real(*a, **k))
    chosen = {m.name: m for m in metrics.BUILTIN}
    rng = np.random.default_rng(0)
    records = {"forget": {"loss": rng.random(40)}, "test": {"loss": rng.random(40) + 0.5}}
    accuracy = chosen["mia_loss_acc"].compute(records, 0)
    assert chosen["mia_loss_indiscernibility"].compute(records, 0) == metrics.indiscernibility(accuracy)
    assert len(calls) == 1
    chosen["mia_loss_acc"].compute(records, 1)  # another seed
    other = {"forget": {"loss": records["forget"]["loss"].copy()}, "test": records["test"]}  # equal values, other arrays
    assert chosen["mia_loss_acc"].compute(other, 0) == accuracy
    assert len(calls) == 3
