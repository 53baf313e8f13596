"""The same seed gives the same numbers under any load; what --seed, --split-seed and --original-seed change;
where every hyperparameter came from."""
import multiprocessing
import os
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import digits_card_dict

from mubench.files import sha256_file
from mubench.results import load_result, validate_result


def burn():
    while True:
        sum(i * i for i in range(10_000))


def test_one_seed_gives_identical_results_under_a_parallel_cpu_load(run_digits, registry, tmp_path):
    """The default budget counts examples, not seconds: a busy machine stops a method at the same step."""
    from mubench.harness import RunConfig, run

    quiet, _ = run_digits("salun")
    burners = [multiprocessing.Process(target=burn, daemon=True) for _ in range(max(2, os.cpu_count() or 2))]
    for process in burners:
        process.start()
    try:
        loaded, _ = run(RunConfig(task="digits", method="salun", output_path=tmp_path), registry)
    finally:
        for process in burners:
            process.kill()
    assert loaded["results"] == quiet["results"]
    assert loaded["unlearning"]["steps"] == quiet["unlearning"]["steps"]


def test_split_and_original_seeds_change_d_f_and_theta_0(run_digits, registry, cli, tmp_path):
    base, _ = run_digits("neggrad")
    done = cli("run", "--task", "digits", "--method", "neggrad", "--split-seed", "1", "--original-seed", "1",
               "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "digits__cnn__neggrad__df5__seed42__split1__orig1.json"
    other = load_result(path)
    validate_result(other, path, registry)
    assert other["config"]["split_seed"] == 1 and other["config"]["original_seed"] == 1
    assert other["split"]["split_seed"] == 1 and other["split"]["forget_sha256"] != base["split"]["forget_sha256"]
    assert other["split"]["n_forget"] == base["split"]["n_forget"]  # same ratio, other samples
    assert other["model_info"]["original"] != base["model_info"]["original"]  # θ₀ cached apart
    assert other["model_info"]["train_seed"] == 1 and base["model_info"]["train_seed"] == 0
    for result in (base, other):  # the result names θ₀'s bits: the SHA-256 of the cached weights file
        weights = Path(result["model_info"]["original"]) / "model.safetensors"
        assert result["model_info"]["original_sha256"] == sha256_file(weights)
    assert other["model_info"]["original_sha256"] != base["model_info"]["original_sha256"]
    assert base["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_original_seed_needs_an_original_trained_here(cli):
    done = cli("run", "--task", "imdb", "--method", "neggrad", "--original-seed", "3")
    assert done.returncode == 2 and "--original-seed trains θ₀ here" in done.stderr and "Traceback" not in done.stderr


def test_seeds_print_mean_and_confidence_interval(cli, tmp_path):
    done = cli("run", "--task", "digits", "--method", "neggrad", "--seeds", "42,87,21", "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("digits__cnn__neggrad__df5__seed*.json"))) == 3
    assert "seeds 42, 87, 21; mean ± 95% CI" in done.stdout
    row = next(line for line in done.stdout.splitlines() if line.startswith("forget_acc "))
    assert row.count("±") == 2


def test_mean_ci():
    from mubench.results import mean_ci

    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and abs(half - 4.303 * 1 / 3**0.5) < 1e-3  # t(0.975, 2) = 4.303
    assert mean_ci([None, float("nan")]) is None and mean_ci([0.5])[0] == 0.5


def test_every_hyperparameter_says_where_it_came_from(registry, tmp_path):
    from mubench.api.registry import Registry

    card = registry.card("digits")
    sources = {}
    args = registry.method("scrub").resolve_args(card, {"alpha": 0.3}, sources)
    assert sources["alpha"] == "command line" and sources["lr"] == "card.methods" and sources["optimizer"] == "card.unlearn"
    assert sources["temperature"] == "method" and args["optimizer"] == "adam"

    authors = digits_card_dict() | {"task": "digits_authors", "protocol": "authors"}
    (tmp_path / "digits_authors.yaml").write_text(yaml.safe_dump(authors))
    card = Registry(include_paths=[tmp_path]).card("digits_authors")
    sources = {}
    args = registry.method("scrub").resolve_args(card, None, sources)
    assert args["optimizer"] == "sgd" and sources["optimizer"] == "method"  # the authors' SGD, not the card's Adam
    assert args["forget_batch_size"] == 8 and sources["forget_batch_size"] == "card.methods"
    assert registry.method("retrain").resolve_args(card)["epochs"] == 30  # retraining always follows the train recipe


def test_results_record_the_protocol_and_the_sources(run_digits):
    result, _ = run_digits("salun")
    config = result["config"]
    assert config["protocol"] == "mubench" and set(config["method_args_sources"]) == set(config["method_args"])


def test_the_retrained_reference_gives_each_metric_s_gap(run_digits, registry):
    retrained, _ = run_digits("retrain")
    result, path = run_digits("neggrad", reference="retrain")
    validate_result(result, path, registry)
    reference, ours, theirs = result["reference"], result["results"]["unlearned"], retrained["results"]["unlearned"]
    assert reference["metrics"] == theirs  # the retrained model of the same D_f, θ₀ and seed
    assert reference["gap"]["forget_acc"] == pytest.approx(abs(ours["forget_acc"] - theirs["forget_acc"]))
    gaps = [abs(ours[f"{part}_acc"] - theirs[f"{part}_acc"]) for part in ("retain", "forget", "test")]
    assert reference["deep_unlearn_score"] == pytest.approx(sum(gaps) / 3 + 1 - ours["forget_mia_loss_indiscernibility"])
    # t_retrain is the reference run's own time: whichever retrain filled the cache first (this test's, or one that
    # --reference ran for another test), its metrics are the same but its wall time is its own
    assert reference["unlearn_s"] > 0
    assert reference["efficiency"] == pytest.approx(reference["unlearn_s"] / result["times"]["unlearn_s"])


def test_a_missing_reference_is_retrained_once_and_cached(run_digits, tmp_path):
    from mubench.harness import RunConfig, run

    first, path = run_digits("neggrad", reference="retrain", split_seed=2)
    assert (path.parent / "digits__cnn__retrain__df5__seed42__split2.json").is_file()  # computed, and written as a result of its own
    second, _ = run(RunConfig(task="digits", method="randlabel", reference="retrain", split_seed=2, output_path=tmp_path))
    assert second["reference"]["metrics"] == first["reference"]["metrics"]
    assert not list(tmp_path.glob("*retrain*"))  # the cached one was used
