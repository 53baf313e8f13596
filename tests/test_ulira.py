"""U-LiRA: the shadows' halves, the likelihood-ratio attack on fixed numbers, and the ordering retrain < original."""
import dataclasses
import json
import math

import numpy as np
import pytest
import yaml
from tests_support import digits_card_dict

from mubench.api.registry import Registry
from mubench.errors import UserError
from mubench.harness import RunConfig
from mubench.ulira import UliraConfig, attack, halves, ulira, validate_ulira

TINY = "ulira_tiny"


def test_halves_come_in_complementary_pairs_holding_half_the_targets():
    targets = np.array([1, 4, 5, 8, 9, 12])
    shadows = halves(20, targets, 6, seed=0)
    assert len(shadows) == 6
    for a, b in zip(shadows[::2], shadows[1::2]):
        assert len(np.intersect1d(a, b)) == 0 and len(np.union1d(a, b)) == 20
        assert np.isin(targets, a).sum() == 3
    counts = sum(np.isin(np.arange(20), half).astype(int) for half in shadows)
    assert (counts == 3).all()  # every example is in exactly half the shadows
    assert all((x == y).all() for x, y in zip(shadows, halves(20, targets, 6, seed=0)))  # seeded
    assert any((x != y).any() for x, y in zip(shadows, halves(20, targets, 6, seed=1)))


def fixed_shadows():
    """Six shadows, four targets; each target unlearned by shadows 0, 2, 4 or by 1, 3, 5."""
    unlearned = np.array([[True, False, True, False], [False, True, False, True]] * 3)
    return unlearned


def test_the_attack_scores_one_where_unlearned_targets_stand_apart():
    unlearned = fixed_shadows()
    stats = np.where(unlearned, 5.0, -5.0) + np.arange(24).reshape(6, 4) * 0.01  # a little spread within each kind
    np.testing.assert_allclose(attack(stats, unlearned), 1.0)


def test_the_attack_scores_one_half_where_the_statistics_tie():
    unlearned = fixed_shadows()
    stats = np.zeros((6, 4))  # unlearned and never-seen alike: the tie is guessed 'never seen' for every target
    np.testing.assert_allclose(attack(stats, unlearned), 0.5)


def test_the_attack_follows_the_likelihood_ratio_formula():
    """One round by hand: Gaussians of the other shadows' values, guess where N_in's density beats N_out's."""
    rng = np.random.default_rng(0)
    unlearned = fixed_shadows()
    stats = rng.normal(size=(6, 4)) + unlearned * 0.8
    scores = attack(stats, unlearned)
    held, others = 0, np.arange(1, 6)
    hits = []
    for j in range(4):
        member = unlearned[others, j]
        inside, outside = stats[others, j][member], stats[others, j][~member]
        density = [-math.log(max(v.std(ddof=1), 1e-4)) - 0.5 * ((stats[held, j] - v.mean()) / max(v.std(ddof=1), 1e-4)) ** 2
                   for v in (inside, outside)]
        hits.append((density[0] > density[1]) == unlearned[held, j])
    truth = unlearned[held]
    expected = (np.mean(np.array(hits)[truth]) + np.mean(np.array(hits)[~truth])) / 2
    assert scores[0] == pytest.approx(expected)


def test_a_round_without_two_shadows_of_each_kind_is_left_out():
    unlearned = np.array([[True, False], [False, True], [True, False], [False, True]])  # 3 others: 1 and 2 of a kind
    assert np.isnan(attack(np.zeros((4, 2)), unlearned)).all()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """digits_memorise in small: 120 examples with 30% noisy labels that a narrow CNN memorises in 60 epochs."""
    card = digits_card_dict()
    card |= {"task": TINY, "description": "U-LiRA's test: a small memorised digits split"}
    card["dataset"]["options"] = {"test_size": 0.2, "seed": 0, "train_size": 120, "label_noise": 0.3}
    card["models"]["cnn"]["params"] = {"width": 8, "hidden": 32}
    card["deletion"] |= {"ratios": [0.2], "default_ratio": 0.2}
    card["train"] |= {"epochs": 60, "batch_size": 16}
    card.pop("methods")
    folder = tmp_path_factory.mktemp("ulira_cards")
    (folder / f"{TINY}.yaml").write_text(yaml.safe_dump(card))
    return folder, Registry([folder]), tmp_path_factory.mktemp("ulira_results")


def attacked(tiny, method: str) -> dict:
    folder, registry, out = tiny
    result, path = ulira(UliraConfig(RunConfig(task=TINY, method=method, output_path=out, include_paths=[folder]), shadows=6), registry)
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    return result


def test_retraining_scores_near_one_half_and_the_original_clearly_above(tiny):
    original, retrain = attacked(tiny, "original"), attacked(tiny, "retrain")
    score = {r["method"]: r["ulira"]["balanced_accuracy"]["mean"] for r in (original, retrain)}
    assert abs(score["retrain"] - 0.5) < 0.1
    assert score["original"] > score["retrain"] + 0.15
    # the same six shadow originals serve both methods: trained once, cached
    assert [s["original_sha256"] for s in original["shadows"]] == [s["original_sha256"] for s in retrain["shadows"]]
    assert original["split"]["n_targets"] == 24 and all(s["n_unlearned"] == 12 for s in original["shadows"])
    assert original["ulira"]["balanced_accuracy"]["n"] == 6 and original["ulira"]["balanced_accuracy"]["ci95"] > 0


def test_a_result_whose_score_is_not_its_shadows_mean_is_refused(tiny):
    result = json.loads(json.dumps(attacked(tiny, "original")))
    result["ulira"]["balanced_accuracy"]["mean"] = 0.5
    with pytest.raises(UserError, match="is not the mean of ulira.per_shadow"):
        validate_ulira(result, "edited.ulira.json")


def test_an_odd_or_small_number_of_shadows_is_refused_in_one_line(tiny, cli):
    folder, _, out = tiny
    done = cli("ulira", "--task", TINY, "--method", "original", "--shadows", "5", "--include-path", folder, "--output-path", out)
    assert done.returncode == 2 and "--shadows 5: expected an even number, 6 or more" in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_the_leaderboard_shows_u_lira_and_skips_an_edited_result(tiny, tmp_path):
    from mubench.leaderboard import build, collect, markdown

    folder, registry, out = tiny
    for method in ("original", "retrain"):
        attacked(tiny, method)
    edited = json.loads(next(out.glob("*original*.ulira.json")).read_text())
    edited["ulira"]["per_shadow"][0] = 0.0
    (out / "edited" / "x.ulira.json").parent.mkdir(exist_ok=True)
    (out / "edited" / "x.ulira.json").write_text(json.dumps(edited))
    board = build(*collect([out], registry), registry)
    rows = board["ulira"][TINY]
    assert {row["method"] for row in rows} == {"original", "retrain"} and all(row["shadows"] == 6 for row in rows)
    assert [r["file"] for r in board["rejected"]] == [str(out / "edited" / "x.ulira.json")]
    text = markdown(board, registry)
    assert f"**U-LiRA on `{TINY}`**" in text and "| `retrain` | 20% | 6 | 24 |" in text


def test_shadows_run_as_ray_tasks_give_the_local_scores(tiny, tmp_path, monkeypatch):
    """The shadows of the original (trained and cached by the local run) unlearned in two Ray workers, one thread each:
    the same statistics as a local run on one thread."""
    import torch

    folder, registry, _ = tiny
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    config = RunConfig(task=TINY, method="original", include_paths=[folder])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local, _ = ulira(UliraConfig(dataclasses.replace(config, output_path=tmp_path / "local"), shadows=6), registry)
    finally:
        torch.set_num_threads(threads)
    remote, _ = ulira(UliraConfig(dataclasses.replace(config, output_path=tmp_path / "ray"), shadows=6, executor="ray",
                                  ray={"num_cpus": 1, "cluster_cpus": 2}), registry)
    import ray

    ray.shutdown()
    assert remote["ulira"] == local["ulira"]
    assert [s["original_sha256"] for s in remote["shadows"]] == [s["original_sha256"] for s in local["shadows"]]


def test_a_task_without_class_logits_is_refused_before_any_data_is_read(registry, tmp_path):
    with pytest.raises(UserError, match="U-LiRA reads each example's class logits; task type 'seq2seq_generation' gives token logits"):
        ulira(UliraConfig(RunConfig(task="samsum", method="original", output_path=tmp_path), shadows=6), registry)
