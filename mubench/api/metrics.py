"""Unlearning metrics shared by every task: membership inference and MU-Bench's overall score."""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.svm import SVC


def mia_efficacy(retain_confidence: np.ndarray, test_confidence: np.ndarray, forget_confidence: np.ndarray) -> float:
    """MIA-efficacy as SalUn reports it (higher means better forgetting).

    An RBF SVC (C = 3) learns members (D_r, its first |D_test| examples) from
    non-members (D_test) by the model's confidence in the true target; the score is
    the fraction of D_f it judges non-member.
    """
    members = retain_confidence[: len(test_confidence)]
    features = np.concatenate([members, test_confidence]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(test_confidence))])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float((attack.predict(forget_confidence.reshape(-1, 1)) == 0).mean())


def balanced_by_stratum(forget: np.ndarray, test: np.ndarray, forget_strata, test_strata, rng) -> tuple[np.ndarray, np.ndarray]:
    """Truncate D_f and D_test statistics to equal counts per stratum (per class)."""
    if forget_strata is None or test_strata is None:
        n = min(len(forget), len(test))
        return forget[rng.permutation(len(forget))[:n]], test[rng.permutation(len(test))[:n]]
    kept_f, kept_t = [], []
    for value in np.intersect1d(forget_strata, test_strata):
        f, t = forget[forget_strata == value], test[test_strata == value]
        n = min(len(f), len(t))
        kept_f.append(f[rng.permutation(len(f))[:n]])
        kept_t.append(t[rng.permutation(len(t))[:n]])
    return np.concatenate(kept_f), np.concatenate(kept_t)


def loss_attack(forget_loss: np.ndarray, test_loss: np.ndarray, forget_strata=None, test_strata=None,
                n_splits: int = 10, seed: int = 0) -> float:
    """The population loss attack's accuracy at telling D_f from D_test (0.5 is ideal).

    Per-example losses, balanced per class; logistic regression scored by
    ``n_splits``-fold stratified shuffle-split cross-validation (NeurIPS 2023
    unlearning challenge, Deep Unlearn).
    """
    rng = np.random.default_rng(seed)
    forget, test = balanced_by_stratum(forget_loss, test_loss, forget_strata, test_strata, rng)
    if min(len(forget), len(test)) < n_splits:
        return float("nan")
    features = np.concatenate([forget, test]).reshape(-1, 1)
    members = np.concatenate([np.ones(len(forget)), np.zeros(len(test))])
    cv = StratifiedShuffleSplit(n_splits=n_splits, random_state=seed)
    return float(cross_val_score(LogisticRegression(), features, members, cv=cv, scoring="accuracy").mean())


def indiscernibility(attack_accuracy: float) -> float:
    """1 − |acc − 0.5| / 0.5: 1 when the attack guesses, 0 when it is always right (or wrong)."""
    return 1 - abs(attack_accuracy - 0.5) / 0.5


def overall_score(test: float, test_original: float, forget: float, chance: float) -> float:
    """MU-Bench's overall score: harmonic mean of test retention and closeness of D_f to chance.

    H(1 − |test − test_original|, 1 − |forget − chance|), and 0 when the test metric
    falls by more than 20% relative to the original model.
    """
    if test < 0.8 * test_original:
        return 0.0
    keep, forgot = 1 - abs(test - test_original), 1 - abs(forget - chance)
    return 0.0 if keep + forgot == 0 else 2 * keep * forgot / (keep + forgot)


def attack_features(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Loss and confidence made finite: a diverged model's NaN reads as the worst value."""
    big = 1e4  # far above any cross-entropy a working model gives
    return {**outputs,
            "loss": np.nan_to_num(outputs["loss"], nan=big, posinf=big, neginf=0.0),
            "confidence": np.nan_to_num(outputs["confidence"], nan=0.0, posinf=1.0, neginf=0.0)}


def attack_metrics(outputs: dict[str, dict[str, np.ndarray]], seed: int) -> dict[str, float]:
    """The attacks on D_f, from the per-example outputs of the ``retain``, ``test`` and ``forget`` splits."""
    forget, retain, test = (attack_features(outputs[part]) for part in ("forget", "retain", "test"))
    accuracy = loss_attack(forget["loss"], test["loss"], forget.get("stratum"), test.get("stratum"), seed=seed)
    return {
        "forget_mia_efficacy": mia_efficacy(retain["confidence"], test["confidence"], forget["confidence"]),
        "forget_mia_loss_acc": accuracy,
        "forget_mia_loss_indiscernibility": indiscernibility(accuracy),
    }
