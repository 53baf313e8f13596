"""The built-in metrics and attacks, registered as a plugin exactly as a third-party package would be.

Every value lies on a 0–1 scale (ROUGE included) except the per-example losses (``nll``, ``mse``) and the
CLIP score (0–100, as torchmetrics defines it).
"""
from __future__ import annotations

import functools
import re

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
from sklearn.svm import SVC

from mubench.api import hookimpl
from mubench.api.metric import Metric

ROUGE_KINDS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
BIG_LOSS = 1e4  # far above any cross-entropy a working model gives


# --- per-split metrics ----------------------------------------------------------------------
def mean(values) -> float:
    """The mean of finite per-example values; NaN for none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


@functools.cache
def rouge_scorer():
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_KINDS), use_stemmer=True)


def sentences_per_line(text: str) -> str:
    """One sentence per line, as ``rougeLsum`` expects (a split after ``.``, ``!`` or ``?`` and a space)."""
    return "\n".join(part for part in re.split(r"(?<=[.!?])\s+", text.strip()) if part)


def rouge_scores(generations, references, kind: str = "rougeL", measure: str = "fmeasure") -> np.ndarray:
    """Per-example ROUGE (Google's ``rouge-score``, Porter stemming) of each generation against its reference.

    ``measure`` is ``fmeasure`` (MU-Bench, MUSE), ``recall`` (TOFU) or ``precision``.
    """
    scorer = rouge_scorer()
    out = []
    for generation, reference in zip(generations, references):
        if kind == "rougeLsum":
            generation, reference = sentences_per_line(generation), sentences_per_line(reference)
        out.append(getattr(scorer.score(reference, generation)[kind], measure))
    return np.asarray(out, dtype=np.float64)


def extraction_strength(token_correct) -> np.ndarray:
    """Per example 1 − k/|y|, k the shortest prefix of the reference after which teacher-forced argmax completes it.

    1 when every token is predicted, 0 when the last one is not (OpenUnlearning's ES).
    """
    out = []
    for correct in token_correct:
        correct = np.asarray(correct, dtype=bool)
        if len(correct) == 0:
            out.append(np.nan)
            continue
        wrong = np.flatnonzero(~correct)
        k = 0 if len(wrong) == 0 else wrong[-1] + 1
        out.append(1 - k / len(correct))
    return np.asarray(out, dtype=np.float64)


# --- attacks on D_f --------------------------------------------------------------------------
def finite_loss(values) -> np.ndarray:
    """Losses made finite: a diverged model's NaN reads as the worst value."""
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=BIG_LOSS, posinf=BIG_LOSS, neginf=0.0)


def finite_probability(values) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)


def mia_efficacy(retain_confidence: np.ndarray, test_confidence: np.ndarray, forget_confidence: np.ndarray) -> float:
    """MIA-efficacy as SalUn reports it (higher means better forgetting).

    An RBF SVC (C = 3) learns members (D_r, its first |D_test| examples) from
    non-members (D_test) by the model's confidence in the true target; the score is
    the fraction of D_f it judges non-member.
    """
    members = retain_confidence[: len(test_confidence)]
    if len(forget_confidence) == 0 or len(members) == 0 or len(test_confidence) == 0:
        return float("nan")
    features = np.concatenate([members, test_confidence]).reshape(-1, 1)
    labels = np.concatenate([np.ones(len(members)), np.zeros(len(test_confidence))])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(features, labels)
    return float((attack.predict(forget_confidence.reshape(-1, 1)) == 0).mean())


def balanced_by_stratum(forget: np.ndarray, test: np.ndarray, forget_strata, test_strata, rng) -> tuple[np.ndarray, np.ndarray]:
    """Truncate D_f and D_test statistics to equal counts per stratum (per class)."""
    if forget_strata is None or test_strata is None:
        n = min(len(forget), len(test))
        return forget[rng.permutation(len(forget))[:n]], test[rng.permutation(len(test))[:n]]
    kept_f, kept_t = [np.empty(0)], [np.empty(0)]
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
    unlearning challenge, Deep Unlearn). NaN with fewer than ``n_splits`` examples a side.
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


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC-AUC of a statistic that should be higher on ``positive``; NaN when a side is empty (ties count half)."""
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    labels = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    return float(roc_auc_score(labels, np.concatenate([positive, negative])))


def min_k_statistic(token_logprobs, k: float = 0.4) -> np.ndarray:
    """Min-K% (Shi et al. 2024): per example, the mean of its ``k`` lowest token log-probabilities (higher: more member-like)."""
    out = []
    for values in token_logprobs:
        values = np.sort(np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-BIG_LOSS, neginf=-BIG_LOSS))
        out.append(values[: max(1, int(len(values) * k))].mean() if len(values) else -BIG_LOSS)
    return np.asarray(out, dtype=np.float64)


def knowledge_gap(forget_score: np.ndarray, retain_score: np.ndarray, seed: int, draws: int = 10) -> float:
    """MU-Bench's knowledge gap: ROC-AUC of the per-example task score telling an equal-size D_r sample from D_f.

    Averaged over ``draws`` samples of D_r. 0.5 when D_f scores like D_r (nothing
    forgotten, or nothing learned); towards 1 as D_f falls below D_r. A non-finite
    score (a diverged model) counts as 0.
    """
    if len(forget_score) == 0 or len(retain_score) == 0:
        return float("nan")
    forget_score, retain_score = (np.nan_to_num(np.asarray(s, np.float64), nan=0.0) for s in (forget_score, retain_score))
    rng = np.random.default_rng(seed)
    n = min(len(forget_score), len(retain_score))
    return float(np.mean([auc(rng.choice(retain_score, n, replace=False), forget_score) for _ in range(draws)]))


# --- the registered metrics ----------------------------------------------------------------
def frechet_distance(a, b) -> float:
    """‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^½) of two sets of feature vectors (rows); NaN with fewer than two a side."""
    from scipy import linalg

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if min(len(a), len(b)) < 2:
        return float("nan")
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root = linalg.sqrtm(cov_a @ cov_b)
    root = root.real if np.iscomplexobj(root) else root
    return float(max(0.0, np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root)))


def _rouge(kind: str, measure: str):
    return lambda r: mean(rouge_scores(r["generation"], r["reference"], kind, measure))


_last_attack: list = []  # (inputs, accuracy) of the last loss attack: mia_loss_acc and its indiscernibility share one fit


def _loss_attack(records, seed):
    forget, test = records["forget"], records["test"]
    inputs = (forget["loss"], test["loss"], forget.get("stratum"), test.get("stratum"))
    if _last_attack and all(a is b for a, b in zip(_last_attack[0], inputs)) and _last_attack[2] == seed:  # the very same arrays
        return _last_attack[1]
    accuracy = loss_attack(finite_loss(forget["loss"]), finite_loss(test["loss"]), forget.get("stratum"), test.get("stratum"), seed=seed)
    _last_attack[:] = [inputs, accuracy, seed]
    return accuracy


BUILTIN = [
    Metric("acc", lambda r: mean(r["correct"]), higher_is_better=True, needs={"correct"}, forgotten="chance",
           description="accuracy"),
    Metric("nll", lambda r: mean(r["loss"]), higher_is_better=False, needs={"loss"}, forgotten="retrain",
           description="mean per-example loss (per-token NLL of the reference for generation)", bounds=(0.0, None)),
    *[Metric(kind, _rouge(kind, "fmeasure"), higher_is_better=True, needs={"generation", "reference"}, forgotten="lower",
             description=f"{kind} F1 of the greedy generation, stemmed") for kind in ROUGE_KINDS],
    Metric("rougeL_recall", _rouge("rougeL", "recall"), higher_is_better=True, needs={"generation", "reference"},
           forgotten="lower", description="ROUGE-L recall of the generation against the reference (TOFU)"),
    Metric("extraction_strength", lambda r: mean(extraction_strength(r["token_correct"])), higher_is_better=True,
           needs={"token_correct"}, forgotten="retrain", description="share of the reference teacher forcing completes"),
    Metric("mia_efficacy", lambda r, seed: mia_efficacy(*(finite_probability(r[p]["confidence"]) for p in ("retain", "test", "forget"))),
           higher_is_better=True, needs={"confidence"}, scope="forget", forgotten="higher",
           description="share of D_f an SVC on confidence (D_r vs D_test) calls non-member (SalUn)"),
    Metric("mia_loss_acc", _loss_attack, higher_is_better=False, needs={"loss"}, scope="forget", forgotten="chance", chance=0.5,
           description="population loss attack's accuracy on D_f vs D_test, balanced per class"),
    Metric("mia_loss_indiscernibility", lambda r, seed: indiscernibility(_loss_attack(r, seed)), higher_is_better=True,
           needs={"loss"}, scope="forget", forgotten="higher", description="1 − |loss attack accuracy − 0.5| / 0.5"),
    Metric("mia_mink_auc", lambda r, seed: auc(*(min_k_statistic(r[part]["token_logprobs"]) for part in ("forget", "test"))),
           higher_is_better=False, needs={"token_logprobs"}, scope="forget", forgotten="retrain", chance=0.5,
           description="Min-K% (k = 0.4) attack AUC, D_f vs D_test"),
    Metric("knowledge_gap", lambda r, seed: knowledge_gap(r["forget"]["score"], r["retain"]["score"], seed),
           higher_is_better=True, needs={"score"}, scope="forget", forgotten="higher",
           description="AUC of the per-example task score, D_r vs D_f (MU-Bench)"),
    # text-to-image: real images' denoising loss, and images generated from the split's class prompts
    Metric("mse", lambda r: mean(r["loss"]), higher_is_better=False, needs={"loss"}, forgotten="retrain",
           description="mean per-example denoising loss (noise-prediction MSE)", bounds=(0.0, None)),
    Metric("clip_score", lambda r: mean(r["clip_score"]), higher_is_better=True, needs={"clip_score"}, forgotten="lower",
           description="CLIP score of generated images with their prompts, 100·max(cos, 0)", bounds=(0.0, 100.0)),
    Metric("clf_acc", lambda r: mean(r["clf_correct"]), higher_is_better=True, needs={"clf_correct"}, forgotten="chance",
           description="an ImageNet classifier's top-1 accuracy on generated images against the prompt's class"),
    Metric("clf_top5_acc", lambda r: mean(r["clf_top5"]), higher_is_better=True, needs={"clf_top5"}, forgotten="lower",
           description="the classifier's top-5 accuracy on generated images"),
    Metric("fid", lambda r: frechet_distance(r["fid_generated"], r["fid_real"]), higher_is_better=False,
           needs={"fid_generated", "fid_real"}, forgotten="higher", bounds=(0.0, None),
           description="Fréchet distance of generated to real images' features (off by default)"),
]


@hookimpl
def mubench_metrics():
    return BUILTIN
