"""The result JSON: its shipped schema catches malformed results; files are written atomically."""
import copy
from pathlib import Path

import pytest

from mubench.errors import UserError
from mubench.files import write_json
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
])
def test_schema_rejects_malformed_results(result, mutate, fragment):
    bad = copy.deepcopy(result)
    mutate(bad)
    with pytest.raises(UserError) as info:
        validate_result(bad, "submission.json")
    assert fragment in str(info.value) and str(info.value).startswith("submission.json: ")


def test_a_result_survives_a_json_round_trip(result, tmp_path):
    write_json(tmp_path / "r.json", result)
    validate_result(load_result(tmp_path / "r.json"), "r.json")


def test_a_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"score": float("nan")})
    assert list(tmp_path.iterdir()) == []


def test_leaderboard_results_are_valid_and_deleted_the_published_samples(registry):
    from mubench.harness import Prepared
    from mubench.splits import indices_sha256

    files = sorted((REPO / "leaderboard_results").rglob("*.json"))
    assert files, "leaderboard_results holds no result"
    drawn = {}
    for path in files:
        result = load_result(path)
        validate_result(result, path)
        card = registry.card(result["task"])
        assert result["task_card"]["sha256"] == card.sha256, f"{path} was made with another version of the card"
        if "loader" not in card.dataset or "download" in card.dataset:  # data not reachable offline
            continue
        ratio = None if "forget_classes" in result["split"] else result["config"]["deletion_ratio"]
        key = (result["task"], result["model"], ratio)
        if key not in drawn:
            prepared = Prepared(registry, result["task"], result["model"], ratio)
            prepared.load()
            drawn[key] = indices_sha256(prepared.forget)
        assert result["split"]["forget_sha256"] == drawn[key], path
