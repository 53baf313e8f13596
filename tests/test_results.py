"""The result JSON: its shipped schema catches malformed results; files are written atomically."""
import copy
import functools
import json
import re
import shutil
from pathlib import Path

import pytest

from mubench import files
from mubench.errors import UserError
from mubench.files import write_json
from mubench.recheck import recheck
from mubench.results import load_result, validate_result

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def result(run_digits):
    return run_digits("neggrad")[0]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r.pop("split"), "'split' is a required property"),
    (lambda r: r["split"].update(forget_sha256="abc"), "key 'split.forget_sha256'"),
    (lambda r: r["split"].update(n_forget=r["split"]["n_forget"] + 1), "n_forget + n_retain must equal n_train"),
    (lambda r: r["results"]["unlearned"].update(dev_acc=0.5), "key 'results.unlearned'"),
    (lambda r: r["results"]["unlearned"].pop("overall_score"), "'overall_score' is a required property"),
    (lambda r: r["results"]["unlearned"].update(test_bleu=0.5), "key 'results.unlearned.test_bleu': metric 'bleu' is not described"),
    (lambda r: r["metrics"]["acc"].update(forgotten="gone"), "key 'metrics.acc.forgotten'"),
    (lambda r: r["config"].update(device="tpu"), "key 'config.device'"),
    (lambda r: r.update(method="original"), "'original' method must leave the model's metrics unchanged"),
    (lambda r: r["method_info"]["taxonomy"].update(corruption="data"), "key 'method_info': is not what method 'neggrad' declares"),
    (lambda r: r["method_info"].update(taxonomy=None), "key 'method_info': is not what method 'neggrad' declares"),
    (lambda r: r.pop("method_info"), "'method_info' is a required property"),
    # meaning, not only shape
    (lambda r: r["results"]["unlearned"].update(forget_acc=1.7),
     "key 'results.unlearned.forget_acc': 1.7 lies outside acc's range [0.0, 1.0]"),
    (lambda r: r["results"]["original"].update(test_acc=-0.5), "key 'results.original.test_acc': -0.5 lies outside"),
    (lambda r: r["results"]["unlearned"].update(test_acc=float("nan")), "key 'results.unlearned.test_acc': nan is not a finite number"),
    (lambda r: r["results"]["unlearned"].update(overall_score=float("nan")), "key 'results.unlearned.overall_score': nan is not"),
    (lambda r: r["times"].update(unlearn_s=float("inf")), "key 'times.unlearn_s': inf is not a finite number"),
    (lambda r: r["times"].update(total_s=r["times"]["unlearn_s"] / 2), "key 'times.total_s': is less than"),
    (lambda r: r.update(date="not-a-date"), "key 'date': 'not-a-date' is not an ISO 8601 date"),
    (lambda r: r.update(date="2999-01-01T00:00:00+00:00"), "key 'date': 2999-01-01T00:00:00+00:00 has no time zone or lies in the future"),
    (lambda r: r.update(date="2026-01-01T00:00:00"), "key 'date': 2026-01-01T00:00:00 has no time zone"),
    (lambda r: r["results"]["unlearned"].update(overall_score=0.99), "key 'results.unlearned.overall_score': is 0.99; its metrics give"),
    (lambda r: r["task_card"].update(sha256="0" * 64), "key 'task_card.sha256': is not the hash of task 'digits''s card"),
    (lambda r: r["metrics"]["acc"].update(higher_is_better=False), "key 'metrics.acc': differs from the metric's own description"),
    (lambda r: r["metrics"].pop("mia_efficacy"), "key 'metrics': describes acc,"),
    (lambda r: r["unlearning"].update(budget_examples=10**9), "key 'unlearning.budget_examples': is 1000000000; the card's"),
    (lambda r: r.update(model="resnet"), "key 'model': 'resnet' is not a model of task 'digits'"),
    (lambda r: r.update(task="digits_nowhere"), "key 'task': unknown task 'digits_nowhere'"),
    (lambda r: r["config"].update(split_seed=3), "key 'config.split_seed': differs from split.split_seed"),
    (lambda r: r["results"]["unlearned"].update(test_mia_efficacy=0.5), "'mia_efficacy' is an attack on D_f"),
])
def test_validation_refuses_results_that_do_not_mean_what_they_say(result, registry, mutate, fragment):
    bad = copy.deepcopy(result)
    mutate(bad)
    with pytest.raises(UserError) as info:
        validate_result(bad, "submission.json", registry, digits_task(registry))
    assert fragment in str(info.value) and str(info.value).startswith("submission.json: ")


@functools.cache
def digits_task(registry):
    """The digits task type prepared on its data (it knows its classes, so its overall score can be recomputed)."""
    from mubench.harness import Prepared

    prepared = Prepared(registry, "digits", None, 0.05)
    prepared.read()
    return prepared.task


@pytest.mark.parametrize("mutate, fragment", [
    (lambda r: r["split"].update(forget_sha256="f" * 64), "key 'split.forget_sha256': differs from the deletion set this mubench draws"),
    (lambda r: r["split"].update(n_forget=r["split"]["n_forget"] + 1, n_retain=r["split"]["n_retain"] - 1),
     "key 'split.n_forget': differs from the deletion set"),
    (lambda r: r["split"].update(data_sha256="e" * 64), "key 'split.data_sha256': differs from the training data"),
    (lambda r: r["config"].update(deletion_ratio=0.1), "key 'split.n_forget': differs from the deletion set"),
])
def test_validation_redraws_the_deletion_set(result, registry, tmp_path, mutate, fragment):
    bad = copy.deepcopy(result)
    mutate(bad)
    write_json(tmp_path / "r.json", bad)
    with pytest.raises(UserError, match=re.escape(fragment)):
        recheck(tmp_path / "r.json", registry)
    write_json(tmp_path / "good.json", result)
    assert recheck(tmp_path / "good.json", registry) == ""
    assert "deletion set" in recheck(tmp_path / "good.json", registry, read_data=False)


def test_validation_recomputes_the_reference_gaps(run_digits, registry):
    result, _ = run_digits("neggrad", reference="retrain")
    validate_result(result, "r.json", registry, digits_task(registry))
    for key, value in (("deep_unlearn_score", 0.0), ("efficiency", 1e6)):
        bad = copy.deepcopy(result)
        bad["reference"][key] = value
        with pytest.raises(UserError, match=f"key 'reference.{key}': does not follow"):
            validate_result(bad, "r.json", registry, digits_task(registry))
    bad = copy.deepcopy(result)
    bad["reference"]["gap"]["forget_acc"] += 0.25
    with pytest.raises(UserError, match="key 'reference.gap'"):
        validate_result(bad, "r.json", registry)


@pytest.mark.parametrize("content, fragment", [
    (b'{"task": "digits", "score": 0.5\xff}', "not UTF-8 text (byte"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "key 'a[0][0]"),
    (b'{"results": {"x": NaN}}', "key 'results.x': nan is not a finite number"),
    (b'{"times": {"x": -Infinity}}', "key 'times.x': -inf is not a finite number"),
    (b"[1, 2]", "expected a JSON object for a result, got list"),
    (b'{"a": 1', "not valid JSON (line 1)"),
])
def test_result_files_are_read_defensively(tmp_path, content, fragment):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_result(path)
    assert fragment in str(info.value) and str(info.value).startswith(f"{path}: ")


def test_an_oversized_result_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 100)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"padding": "x" * 200}))
    with pytest.raises(UserError, match="bytes is too large for a result"):
        load_result(path)


def test_validate_from_the_cli_is_one_line_per_bad_file(result, cli, tmp_path):
    good, forged, nested, foreign = (tmp_path / f"{name}.json" for name in ("good", "forged", "nested", "foreign"))
    write_json(good, result)
    write_json(forged, {**result, "split": {**result["split"], "forget_sha256": "a" * 64}})
    nested.write_text("[" * 50_000 + "]" * 50_000)
    foreign.write_bytes(b"\xfe\xff{}")
    done = cli("validate", good, forged, nested, foreign)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stdout.strip() == f"{good}: ok (result)"
    lines = done.stderr.strip().splitlines()
    assert [line.split(": ")[1] for line in lines] == ["invalid"] * 3 and len(lines) == 3, done.stderr
    assert "forged.json: key 'split.forget_sha256'" in lines[0] and "nested" in lines[1] and "not UTF-8" in lines[2]


def test_a_result_survives_a_json_round_trip(result, registry, tmp_path):
    write_json(tmp_path / "r.json", result)
    validate_result(load_result(tmp_path / "r.json"), "r.json", registry)


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"score": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_leaderboard_results_are_valid_and_the_published_leaderboard_is_built_from_them(registry, monkeypatch):
    """Every published result passes `mubench validate` in full (its card, metrics, scores and re-drawn deletion set),
    the published leaderboard.json and tables.md are what `mubench leaderboard` makes of them now, and the README's
    result tables are those tables."""
    from mubench.leaderboard import build, collect, markdown

    monkeypatch.chdir(REPO)  # the published page names its files relative to the repository
    accepted, rejected = collect([Path("leaderboard_results")], registry)
    assert accepted and rejected == []
    # like with like: each task's published results start from one θ₀, computed by one kind of CPU kernels
    runs = [r for _, r in accepted if r.get("kind") != "ulira"]
    made_with = {(r["task"], r["model"], r["model_info"].get("original_sha256"), r["environment"].get("cpu_capability")) for r in runs}
    assert len(made_with) == len({key[:2] for key in made_with}) and all(key[2] and key[3] for key in made_with), made_with
    # U-LiRA's: on each task, every method attacked through the same shadow originals, on the same kind of kernels
    shadows = {(r["task"], r["config"]["shadows"], tuple(s["original_sha256"] for s in r["shadows"]), r["environment"]["cpu_capability"])
               for _, r in accepted if r.get("kind") == "ulira"}
    assert len(shadows) == len({key[:2] for key in shadows}), shadows
    built = build(accepted, rejected, registry)
    published = json.loads((REPO / "leaderboard_results" / "site" / "leaderboard.json").read_text())
    for board in (built, published):
        del board["generated"]
    assert built == published, "rebuild it: mubench leaderboard leaderboard_results --out leaderboard_results/site"
    tables = markdown(built, registry)
    assert (REPO / "leaderboard_results" / "site" / "tables.md").read_text() == tables
    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- results-tables: leaderboard_results/site/tables.md -->\n", "<!-- results-tables end -->"
    assert readme[readme.index(begin) + len(begin):readme.index(end)].strip() == tables.strip(), "paste tables.md into the README"


@pytest.mark.parametrize("lora", [None, 4], ids=["full", "lora"])
def test_verify_re_evaluates_the_saved_weights_and_finds_a_forged_number(run_digits, registry, cli, tmp_path, lora):
    from mubench.lora import LoraSpec
    from mubench.recheck import verify

    # seeds of their own: result file names do not yet tell a LoRA or --save-model run apart
    result, path = run_digits("neggrad", save_model=True, seed=7 if lora is None else 8, lora=None if lora is None else LoraSpec(rank=lora))
    weights = path.with_suffix(".safetensors")
    assert result["model_info"]["unlearned_weights"] == {"file": weights.name, "sha256": files.sha256_file(weights)}
    report = verify(path, registry)
    assert report.mismatched == [] and set(report.compared) == set(result["results"]["unlearned"])

    forged = tmp_path / path.name
    shutil.copy(weights, tmp_path / weights.name)
    claimed = copy.deepcopy(result)
    claimed["results"]["unlearned"]["retain_acc"] -= 0.01  # still a valid-looking number
    write_json(forged, claimed)
    assert verify(forged, registry).mismatched == ["retain_acc"]
    if lora is None:
        done = cli("verify", forged)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines() == [f"mubench: error: {forged}: does not verify: retain_acc differ from the "
                                                    f"re-evaluation by more than 1e-06"]
        assert cli("verify", path).stdout.strip().endswith(f"{path}: verified ({len(report.compared)} metrics within 1e-06)")


def test_verify_refuses_edited_or_missing_weights(run_digits, registry, tmp_path):
    import safetensors.torch

    from mubench.recheck import verify

    result, path = run_digits("neggrad", save_model=True, seed=7)
    write_json(tmp_path / path.name, result)
    with pytest.raises(UserError, match="its weights .* are missing"):
        verify(tmp_path / path.name, registry)
    tensors = safetensors.torch.load_file(path.with_suffix(".safetensors"))
    safetensors.torch.save_file({k: -v for k, v in tensors.items()}, tmp_path / path.with_suffix(".safetensors").name)
    with pytest.raises(UserError, match="does not match the SHA-256 that .* records"):
        verify(tmp_path / path.name, registry)
    del result["model_info"]["unlearned_weights"]
    write_json(tmp_path / "unsaved.json", result)
    with pytest.raises(UserError, match="has no saved weights to verify"):
        verify(tmp_path / "unsaved.json", registry)


def test_the_summary_says_when_the_budget_stopped_a_run_and_numbers_are_rounded(run_digits):
    from mubench.results import number, seeds_table, summary_table

    stopped, _ = run_digits("finetune", method_args={"epochs": 40})  # 40 epochs over D_r: more than retraining's 30
    done = stopped["unlearning"]
    assert done["budget_exhausted"] and done["examples"] <= done["budget_examples"]
    table = summary_table(stopped)
    assert f"budget: hit after {done['steps']:,} steps and {done['examples']:,} examples; the limit was " \
           f"{done['budget_examples']:,} examples (what retraining processes)" in table
    assert "budget" not in summary_table(run_digits("neggrad")[0])
    assert "budget: hit in 1 of 2 runs" in seeds_table([stopped, run_digits("finetune")[0]])
    assert [number(v) for v in (0.123456, 12.3456, 123456.7, None, -0.5)] == \
           ["   0.1235", "    12.35", "  123,457", "      n/a", "  -0.5000"]


def test_a_published_digits_result_is_what_the_current_code_produces(run_digits):
    """The committed NegGrad result on digits (5%, seed 42), regenerated here. Where this machine trains θ₀ to the
    published bits (the same kind of CPU), every number must agree to 1e-9; on another kind the last bits of θ₀ differ
    (README: What mubench guarantees) and a metric may move by a few examples' worth (0.05) but no more."""
    published = json.loads((REPO / "leaderboard_results" / "digits" / "digits__cnn__neggrad__df5__seed42.json").read_text())
    regenerated, _ = run_digits("neggrad")
    assert regenerated["split"] == published["split"]  # the same D_f, drawn from the same data
    assert regenerated["config"]["method_args"] == {k: v for k, v in published["config"]["method_args"].items() if k != "momentum"}
    same_bits = regenerated["model_info"]["original_sha256"] == published["model_info"]["original_sha256"]
    tolerance = 1e-9 if same_bits else 0.05
    for block in ("original", "unlearned"):
        assert regenerated["results"][block].keys() == published["results"][block].keys()
        for key, value in published["results"][block].items():
            assert regenerated["results"][block][key] == pytest.approx(value, abs=tolerance), (block, key, same_bits)
