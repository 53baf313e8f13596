"""`mubench tune`: the held-out split carved from D_r, the Optuna study (objectives, choice, resume) and --tuned runs."""
import json
import math

import numpy as np
import optuna
import pytest
import yaml

from mubench.errors import UserError
from mubench.evaluation import describe
from mubench.harness import Prepared, RunConfig, read_tuned, run
from mubench.tune import PARETO_PARTS, TuneConfig, direction, suggest, trials_table, tune


@pytest.fixture(scope="module")
def held_out(registry):
    prepared = Prepared(registry, "digits", None, 0.05, validation=0.1)
    prepared.load()
    return prepared


def test_the_held_out_split_comes_from_d_r_and_keeps_the_real_runs_d_f(held_out, digits_prepared):
    n = digits_prepared.n_train
    real_forget = digits_prepared.forget
    held = np.setdiff1d(np.arange(n), held_out.kept_rows)
    assert len(held) == held_out.n_test == round(0.1 * (n - len(real_forget)))
    assert not np.isin(held, real_forget).any()  # nothing of D_f is held out, nothing of D_test is used
    assert held_out.n_train == n - len(held)
    np.testing.assert_array_equal(held_out.kept_rows[held_out.forget], real_forget)  # the same examples are forgotten
    # stratified: each class holds about a tenth of its retained examples out
    retained = np.setdiff1d(np.arange(n), real_forget)
    for label in range(10):
        share = np.isin(held, retained[digits_prepared.strata[retained] == label]).sum() / (digits_prepared.strata[retained] == label).sum()
        assert abs(share - 0.1) < 0.03
    assert held_out.data_sha256 != digits_prepared.data_sha256  # θ₀ and retrain of tuning are cached apart


def test_class_wise_tuning_holds_out_examples_of_the_forgotten_classes(registry):
    prepared = Prepared(registry, "digits_classes", None, None, validation=0.1)
    prepared.load()
    assert len(prepared.forgotten_rows) > 0 and len(prepared.test_rows) > 0  # held-out examples of both kinds
    np.testing.assert_array_equal(prepared.forget, np.flatnonzero(np.isin(prepared.strata, prepared.classes)))


def test_a_validation_share_outside_zero_and_one_is_refused(registry):
    with pytest.raises(UserError, match="validation share 1.5"):
        Prepared(registry, "digits", None, 0.05, validation=1.5)


def test_scalar_objectives_take_their_direction_from_the_metric(digits_prepared):
    metrics = describe(digits_prepared.metrics)
    assert direction("test_acc", metrics) == "maximize"
    assert direction("retain_acc", metrics) == "maximize"
    assert direction("forget_mia_efficacy", metrics) == "maximize"  # forgetting raises it
    assert direction("gap.forget_acc", metrics) == direction("deep_unlearn_score", metrics) == "minimize"
    with pytest.raises(UserError, match="forgetting moves it towards chance"):
        direction("forget_acc", metrics)
    with pytest.raises(UserError, match="--objective 'tset_acc'"):
        direction("tset_acc", metrics)


def test_suggest_keeps_the_hyperparameters_type():
    from mubench.api.method import Choice, Range

    trial = optuna.trial.FixedTrial({"epochs": 3, "lr": 0.01, "optimizer": "sgd"})
    assert suggest(trial, "epochs", Range(1, 10), 5) == 3 and isinstance(suggest(trial, "epochs", Range(1, 10), 5), int)
    assert suggest(trial, "lr", Range(1e-5, 1e-1, log=True), 1e-3) == 0.01
    assert suggest(trial, "optimizer", Choice(("adam", "sgd")), "adam") == "sgd"


def test_trials_order_by_score_with_zero_first_ties_by_number_and_no_score_last():
    from types import SimpleNamespace

    from mubench.tune import by_score

    def trial(number, score):
        return SimpleNamespace(number=number, user_attrs={"scores": {"deep_unlearn_score": score}})

    trials = [trial(0, 0.3), trial(1, None), trial(2, 0.0), trial(3, 0.3), trial(4, 0.1)]
    assert [t.number for t in sorted(trials, key=by_score)] == [2, 4, 0, 3, 1]


def tune_config(tmp_path, trials, **options):
    run_config = RunConfig(task="digits", method="ngplus", method_args=options.pop("method_args", {}))
    return TuneConfig(run_config, trials, study_dir=tmp_path, **options)


@pytest.fixture(scope="module")
def study(registry, tmp_path_factory):
    """Three NSGA-II trials of NG+ on digits (lr fixed: the search is over epochs and alpha)."""
    folder = tmp_path_factory.mktemp("tuning")
    return folder, tune(tune_config(folder, 3, method_args={"lr": 0.001}), registry)


def test_a_study_writes_the_pareto_trial_with_the_best_score_as_a_methods_block(study):
    folder, tuned = study
    finished = [t for t in tuned.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert tuned.ran == len(finished) == 3
    assert set(finished[0].params) == {"epochs", "alpha"}  # the fixed lr is not searched
    front = tuned.study.best_trials
    assert tuned.chosen in front
    assert tuned.chosen.user_attrs["scores"]["deep_unlearn_score"] == min(t.user_attrs["scores"]["deep_unlearn_score"] for t in front)
    for t in finished:  # each objective is the trial's Deep Unlearn part; the score is their mean gap plus 1 − indiscernibility
        scores = t.user_attrs["scores"]
        assert t.values == [scores[key] for key in PARETO_PARTS]
        assert math.isclose(scores["deep_unlearn_score"], sum(t.values[:3]) / 3 + t.values[3])
    written = yaml.safe_load(tuned.path.read_text())
    assert written["methods"]["ngplus"] == tuned.chosen.params | {"lr": 0.001}
    assert written["study"]["trial"] == tuned.chosen.number and written["study"]["trials"] == 3
    assert (folder / written["study"]["storage"]).is_file()
    assert "chosen: trial" in trials_table(tuned)


def test_a_study_resumes_and_stops_at_its_trial_count(study, registry):
    folder, tuned = study
    again = tune(tune_config(folder, 3, method_args={"lr": 0.001}), registry)
    assert again.ran == 0 and again.chosen.number == tuned.chosen.number
    more = tune(tune_config(folder, 4, method_args={"lr": 0.001}), registry)
    assert more.ran == 1 and len(more.study.trials) == 4


def test_the_same_sampler_seed_proposes_the_same_trials(study, registry, tmp_path):
    _, tuned = study
    other = tune(tune_config(tmp_path, 2, method_args={"lr": 0.001}), registry)
    assert [t.params for t in other.study.trials] == [t.params for t in tuned.study.trials[:2]]
    assert [t.values for t in other.study.trials] == [t.values for t in tuned.study.trials[:2]]  # same bits: same numbers


def test_a_study_made_with_another_objective_is_not_mixed_in(study, registry):
    folder, _ = study
    with pytest.raises(UserError, match="another --study-dir"):
        tune(tune_config(folder, 3, method_args={"lr": 0.001}, objective="deep_unlearn_score"), registry)


def test_a_run_with_the_tuned_file_records_its_study_and_never_overwrites_the_default(study, registry, tmp_path):
    _, tuned = study
    result, path = run(RunConfig(task="digits", method="ngplus", tuned=tuned.path, output_path=tmp_path), registry)
    default, default_path = run(RunConfig(task="digits", method="ngplus", output_path=tmp_path), registry)
    assert path != default_path
    config = result["config"]
    assert config["tuned"]["study"]["trial"] == tuned.chosen.number and len(config["tuned"]["sha256"]) == 64
    assert {key for key, source in config["method_args_sources"].items() if source == "tuned"} == {"epochs", "alpha", "lr"}
    assert config["method_args"]["epochs"] == tuned.chosen.params["epochs"]
    assert "validation" not in config and result["split"]["n_test"] == default["split"]["n_test"]  # judged on D_test
    assert json.loads(path.read_text())["config"]["tuned"] == config["tuned"]


def test_a_tuned_file_of_another_method_is_refused_in_one_line(study):
    _, tuned = study
    with pytest.raises(UserError, match="has no methods.scrub block"):
        read_tuned(tuned.path, "scrub")


def test_the_references_have_nothing_to_tune(registry, tmp_path):
    with pytest.raises(UserError, match="is a reference"):
        tune(TuneConfig(RunConfig(task="digits", method="retrain"), 2, study_dir=tmp_path), registry)


def test_tune_cli_prints_the_trials_and_the_file(cli, tmp_path):
    done = cli("tune", "--task", "digits", "--method", "neggrad", "--trials", "2", "--objective", "gap.forget_acc",
               "--study-dir", tmp_path, "--seed", "42")
    assert done.returncode == 0, done.stderr
    assert "2 trials finished (2 this time)" in done.stdout
    assert (tmp_path / "digits__cnn__neggrad__df5.yaml").is_file()
    bad = cli("tune", "--task", "digits", "--method", "neggrad", "--trials", "0", "--study-dir", tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--trials 0" in bad.stderr



def test_a_sweep_runs_a_method_with_its_tuned_file(study, registry, tmp_path):
    from mubench.sweep import Sweep, cells, execute

    _, tuned = study
    sweep = Sweep.read(None, {"tasks": ["digits"], "methods": ["ngplus"], "output": str(tmp_path), "tuned": {"ngplus": str(tuned.path)}})
    planned = cells(sweep, registry, {})
    outcomes = execute(sweep, planned, registry, {})
    assert [o.state for o in outcomes] == ["ran"]
    result = json.loads(planned[0].path.read_text())
    assert "__args" in planned[0].filename and result["config"]["tuned"]["study"]["name"] == tuned.study.study_name


def test_the_leaderboard_sets_a_tuned_row_beside_the_default(study, registry, tmp_path):
    from mubench.leaderboard import build, collect, markdown

    _, tuned = study
    for options in ({"tuned": tuned.path}, {}):
        run(RunConfig(task="digits", method="ngplus", output_path=tmp_path, reference="retrain", **options), registry)
    board = build(*collect([tmp_path], registry), registry)
    rows = {row["tuned"]: row for row in board["tasks"]["digits"]["rows"] if row["method"] == "ngplus"}
    assert set(rows) == {None, f"{tuned.study.study_name}#{tuned.chosen.number}"}
    text = markdown(board, registry)
    assert "**Tuned vs default on `digits`**" in text
    line = next(line for line in text.splitlines() if line.startswith("| `ngplus` | epochs="))
    default, chosen = (rows[key]["values"]["test_acc"]["mean"] for key in (None, f"{tuned.study.study_name}#{tuned.chosen.number}"))
    assert f"{default:.3f} → {chosen:.3f}" in line
