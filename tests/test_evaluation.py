"""The evaluation contract: metric plugins chosen by the card, the metrics' edge cases, seed independence."""
import numpy as np
import pytest
import torch
import yaml
from tests_support import digits_card_dict

from mubench.api import Metric, hookimpl
from mubench.errors import UserError
from mubench.metrics import extraction_strength, knowledge_gap, min_k_statistic, rouge_scores
from mubench.results import validate_result


def brier(records):
    """Mean squared error of the probability of the true class (a metric a third party might add)."""
    return float(np.mean((1 - records["confidence"]) ** 2))


class BrierPlugin:
    @hookimpl
    def mubench_metrics(self):
        return [Metric("brier", brier, higher_is_better=False, needs={"confidence"}, forgotten="retrain")]


def card_with(tmp_path, metrics):
    card = digits_card_dict() | {"task": "digits_metrics", "metrics": metrics}
    (tmp_path / "digits_metrics.yaml").write_text(yaml.safe_dump(card))
    return tmp_path


def test_a_third_party_metric_is_selected_by_the_card_and_described_in_the_result(tmp_path):
    from mubench.api.registry import Registry
    from mubench.harness import RunConfig, run

    folder = card_with(tmp_path, ["acc", "brier", "mia_efficacy"])
    registry = Registry(include_paths=[folder], plugins=[BrierPlugin()])
    result, path = run(RunConfig(task="digits_metrics", method="neggrad", output_path=tmp_path / "out"), registry)
    validate_result(result, path, registry)
    unlearned = result["results"]["unlearned"]
    assert {"test_brier", "forget_brier", "retain_brier", "forget_mia_efficacy"} <= set(unlearned)
    assert "forget_mia_loss_acc" not in unlearned  # only what the card lists runs
    assert result["metrics"]["brier"] == {"higher_is_better": False, "scope": "split", "forgotten": "retrain", "needs": ["confidence"]}
    assert 0 <= unlearned["forget_brier"] <= 1


@pytest.mark.parametrize("metrics, message", [
    (["acc", "rouge"], "key 'metrics[1]': unknown metric 'rouge'"),
    (["acc", "rougeL"], "metric 'rougeL' needs generation, reference, which task type 'image_classification' does not record"),
    (["mia_efficacy"], "the overall score of task type 'image_classification' needs acc"),
])
def test_the_card_s_metrics_are_checked_before_any_data_is_read(tmp_path, metrics, message):
    from mubench.api.registry import Registry
    from mubench.harness import Prepared

    registry = Registry(include_paths=[card_with(tmp_path, metrics)])
    with pytest.raises(UserError) as info:
        Prepared(registry, "digits_metrics", None, 0.05)
    assert message in str(info.value)


def test_the_original_s_evaluation_does_not_depend_on_the_run_seed(run_digits):
    """Attacks are seeded by the split seed: two run seeds see the same θ₀ numbers (sweeps can cache them)."""
    first, _ = run_digits("neggrad")
    second, _ = run_digits("neggrad", seed=87)
    assert first["results"]["original"] == second["results"]["original"]
    assert first["results"]["unlearned"] != second["results"]["unlearned"]


def test_evaluation_does_not_move_the_training_random_streams(digits_prepared):
    data = digits_prepared.data(torch.device("cpu"), seed=3)
    state = data.generator.get_state()
    for _ in data.loader("test", 64, shuffle=False):
        pass
    assert torch.equal(state, data.generator.get_state())
    next(iter(data.loader("retain", 64)))
    assert not torch.equal(state, data.generator.get_state())  # a shuffled loader does draw from it


def test_rouge_scores_stem_and_score_per_example():
    scores = rouge_scores(["the cats were running home", "nothing alike", ""], ["the cat was running home", "the cat", "the cat"])
    assert scores[0] == pytest.approx(0.8)  # cats~cat, running~running; were≠was
    assert scores[1] == 0.0 and scores[2] == 0.0
    recall = rouge_scores(["the cat"], ["the cat sat down"], measure="recall")
    assert recall[0] == pytest.approx(0.5)
    lsum = rouge_scores(["A b. C d."], ["A b. C d."], kind="rougeLsum")
    assert lsum[0] == pytest.approx(1.0)


def test_extraction_strength_edge_cases():
    es = extraction_strength([[True, True, True, True], [False, True, True, True], [True, True, True, False], [], [True, False, True]])
    assert es[:3].tolist() == [1.0, 0.75, 0.0] and np.isnan(es[3]) and es[4] == pytest.approx(1 / 3)


def test_knowledge_gap_edge_cases():
    assert knowledge_gap(np.zeros(5), np.ones(20), seed=0) == 1.0  # D_f forgotten, D_r kept
    assert knowledge_gap(np.ones(5), np.ones(20), seed=0) == 0.5  # ties: no gap
    assert knowledge_gap(np.ones(5), np.zeros(20), seed=0) == 0.0
    assert np.isnan(knowledge_gap(np.array([]), np.ones(3), seed=0))


def test_min_k_uses_the_lowest_tokens():
    stats = min_k_statistic([np.array([-0.1, -0.2, -5.0, -0.1, -0.1]), np.array([]), np.array([-1.0])], k=0.4)
    assert stats[0] == pytest.approx((-5.0 - 0.2) / 2) and stats[1] < -1e3 and stats[2] == -1.0


def test_list_metrics_shows_each_direction_and_what_it_needs(cli):
    done = cli("list", "metrics")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert {"acc", "rougeL", "mia_mink_auc", "knowledge_gap"} <= set(rows)
    assert "lower is better" in rows["mia_mink_auc"] and "needs: generation, reference" in rows["rougeL"]
