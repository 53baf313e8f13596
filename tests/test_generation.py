"""SAMSum and BioFact end to end on tiny T5 and Llama models, and the sequence pieces they rest on.

The fixture cards include the real ones and only change the recipe, so that the tiny
models memorise their training split: what unlearning removes is demonstrably there.
"""
import numpy as np
import pytest
import torch
import yaml
from tests_support import REPO

from mubench.api.losses import IGNORE, label_logprobs, sequence_nll, token_kl
from mubench.evaluation import overall_score
from mubench.results import validate_result

TASKS = {"samsum": "t5-small", "biofact": "smollm2-360m"}
PRIMARY = {"samsum": "rougeL", "biofact": "rougeL_recall"}
METHODS = ["neggrad", "randlabel", "badt", "scrub", "salun", "retrain", "original", "finetune"]
TINY_RECIPE = {"generation": {"max_new_tokens": 16},
               "train": {"epochs": 100, "batch_size": 8, "lr": 0.003, "warmup_steps": 10},
               "unlearn": {"epochs": 5, "batch_size": 8, "lr": 0.001},
               "methods": {"randlabel": {"lr": 0.003}}}


@pytest.fixture(scope="session")
def tiny_cards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation_cards")
    for task in TASKS:
        card = {"include": str(REPO / "tasks" / task / f"{task}.yaml"), "task": f"{task}_tiny", **TINY_RECIPE}
        (folder / f"{task}_tiny.yaml").write_text(yaml.safe_dump(card))
    return folder


@pytest.fixture(scope="session")
def generation_registry(tiny_cards):
    from mubench.api.registry import Registry

    return Registry(include_paths=[tiny_cards])


@pytest.fixture(scope="session")
def run_generation(generation_registry, task_data, tmp_path_factory):
    """Run a method on a tiny generative task in-process (cached per task and method), in fp32 on any device.

    The memorisation these tests assert is calibrated in fp32; under bf16 autocast the
    tiny models learn less in the same recipe (on an H200, SAMSum's D_f ROUGE-L 0.82).
    """
    from mubench.harness import RunConfig, run

    out = tmp_path_factory.mktemp("generation_results")
    cache = {}

    def go(task, method):
        if (task, method) not in cache:
            config = RunConfig(task=f"{task}_tiny", method=method, model=TASKS[task], deletion_ratio=0.1,
                               data_dir=task_data(task), output_path=out, precision="fp32")
            cache[task, method] = run(config, generation_registry)
        return cache[task, method]

    return go


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", TASKS)
def test_every_method_runs_on_both_generative_tasks(run_generation, generation_registry, task, method):
    result, path = run_generation(task, method)
    validate_result(result, path, generation_registry)
    metric = PRIMARY[task]
    assert result["metrics"][metric] == {"higher_is_better": True, "scope": "split", "forgotten": "lower",
                                         "needs": ["generation", "reference"]}
    for block in result["results"].values():
        assert {f"test_{metric}", f"forget_{metric}", "forget_knowledge_gap", "forget_mia_loss_acc", "forget_mia_efficacy"} <= set(block)
    assert not result["unlearning"]["diverged"]


@pytest.mark.parametrize("task", TASKS)
def test_the_original_memorised_d_f(run_generation, task):
    """D_f was learned: θ₀ reproduces it, and a model retrained without it does not.

    The kind of CPU sets how well: on an AVX-512 Xeon θ₀'s SAMSum D_f ROUGE-L converges to
    0.911 (test 0.819, retrained 0.756; 150 epochs give the same), where the machines that
    calibrated this test reached 0.95 and more.
    """
    metric = PRIMARY[task]
    original = run_generation(task, "original")[0]["results"]["original"]
    retrained = run_generation(task, "retrain")[0]["results"]["unlearned"]
    assert original[f"forget_{metric}"] >= 0.9
    assert original[f"forget_{metric}"] > original[f"test_{metric}"] + 0.05
    assert retrained[f"forget_{metric}"] < original[f"forget_{metric}"] - 0.15


@pytest.mark.parametrize("method", ["neggrad", "randlabel"])
@pytest.mark.parametrize("task", TASKS)
def test_forgetting_lowers_d_f_rouge_while_original_keeps_it(run_generation, task, method):
    metric = PRIMARY[task]
    result = run_generation(task, method)[0]["results"]
    kept = run_generation(task, "original")[0]["results"]
    assert kept["unlearned"][f"forget_{metric}"] == kept["original"][f"forget_{metric}"]
    assert result["unlearned"][f"forget_{metric}"] <= result["original"][f"forget_{metric}"] - 0.1
    assert result["unlearned"]["forget_nll"] > result["original"]["forget_nll"]
    assert result["unlearned"]["forget_knowledge_gap"] > result["original"]["forget_knowledge_gap"]


@pytest.mark.parametrize("method", ["graddiff", "npo", "dpo", "rmu", "undial", "wga"])
def test_the_language_model_methods_forget_the_memorised_bios(run_generation, method):
    """OpenUnlearning's methods on the tiny Llama that memorised D_f: D_f's ROUGE-L recall and likelihood fall (SimNPO,
    whose forget loss weighs γ = 0.125, moves it only to 0.94 in this recipe's 5 epochs)."""
    result = run_generation("biofact", method)[0]["results"]
    assert result["unlearned"]["forget_rougeL_recall"] <= result["original"]["forget_rougeL_recall"] - 0.1
    assert result["unlearned"]["forget_nll"] > result["original"]["forget_nll"]


def test_biofact_records_scores_before_and_after_fine_tuning(run_generation, generation_registry):
    """The cached original's sidecar keeps the instruction model's scores before it learned the bios."""
    import json
    from pathlib import Path

    result, _ = run_generation("biofact", "original")
    sidecar = json.loads((Path(result["model_info"]["original"]) / "model.json").read_text())
    assert sidecar["metrics"]["train_rougeL_recall"] >= 0.95
    assert sidecar["metrics_before"]["train_rougeL_recall"] < 0.5


def test_cli_runs_the_real_cards_offline(task_data, cli, tmp_path):
    """`mubench run --task samsum|biofact --data-dir FIXTURE`: the shipped cards, end to end, valid results with ROUGE and attacks."""
    from mubench.api.registry import Registry
    from mubench.results import load_result

    for task, metric in PRIMARY.items():
        done = cli("run", "--task", task, "--method", "neggrad", "--model", TASKS[task], "--data-dir", task_data(task),
                   "--output-path", tmp_path)
        assert done.returncode == 0, done.stderr
        path = next(tmp_path.glob(f"{task}__*.json"))
        result = load_result(path)
        validate_result(result, path, Registry())
        assert f"forget_{metric}" in result["results"]["unlearned"] and "forget_mia_loss_acc" in result["results"]["unlearned"]


def test_a_shifted_test_set_is_evaluated_beside_d_test(tiny_cards, task_data, tmp_path):
    """SAMSum's XSum transfer test, enabled by an include card: shifted_<metric> for both models, its size recorded."""
    from fixtures import generation

    from mubench.api.registry import Registry
    from mubench.harness import RunConfig, run

    xsum = generation.xsum(tmp_path / "xsum")
    card = {"include": str(tiny_cards / "samsum_tiny.yaml"), "task": "samsum_xsum",
            "dataset": {"shifted_test": {"enabled": True, "path": str(xsum), "revision": None, "max_examples": 10}}}
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "samsum_xsum.yaml").write_text(yaml.safe_dump(card))
    config = RunConfig(task="samsum_xsum", method="neggrad", model="t5-small", deletion_ratio=0.1, data_dir=task_data("samsum"),
                       output_path=tmp_path / "out", precision="fp32")
    registry = Registry(include_paths=[tiny_cards, tmp_path / "cards"])
    result, path = run(config, registry)
    validate_result(result, path, registry)
    assert result["split"]["n_shifted"] == 10
    for block in result["results"].values():
        assert {"shifted_rougeL", "shifted_nll", "test_rougeL"} <= set(block)
        assert block["shifted_rougeL"] < block["test_rougeL"]  # XSum's articles are not SAMSum's dialogues


def test_the_shifted_test_set_is_off_by_default(generation_registry):
    from mubench.data import load_shifted

    card = generation_registry.card("samsum")
    assert card.dataset["shifted_test"]["path"] == "EdinburghNLP/xsum" and load_shifted(card) is None


def test_biofact_without_data_says_how_to_get_it(cli):
    done = cli("run", "--task", "biofact", "--method", "neggrad")
    assert done.returncode == 2
    assert "FActScore" in done.stderr and "--data-dir" in done.stderr and "Traceback" not in done.stderr


# --- the sequence pieces ------------------------------------------------------------------------
def test_sequence_nll_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(1, 5, 11)
    labels = torch.tensor([[3, 1, 4, 1, 5]])
    padded_logits = torch.cat([logits, torch.randn(1, 3, 11)], dim=1)
    padded_labels = torch.cat([labels, torch.full((1, 3), IGNORE)], dim=1)
    expected = torch.nn.functional.cross_entropy(logits[0], labels[0])
    assert torch.allclose(sequence_nll(logits, labels), expected[None])
    assert torch.allclose(sequence_nll(padded_logits, padded_labels), expected[None])
    assert sequence_nll(logits, torch.full_like(labels, IGNORE)).item() == 0.0  # no target tokens


@pytest.mark.parametrize("chunk", [28, 56, 1 << 22])  # one example per chunk, two, the whole batch
def test_chunked_log_probs_have_the_full_computations_gradient(monkeypatch, chunk):
    from mubench.api import losses

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 7, requires_grad=True)
    labels = torch.tensor([[1, 2, IGNORE, IGNORE], [0, 6, 5, 4], [IGNORE, 3, 3, IGNORE]])
    ours = label_logprobs(logits, labels)
    (ours * torch.arange(12.0).view(3, 4)).sum().backward()
    grad, logits.grad = logits.grad.clone(), None
    full = torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0)[..., None])[..., 0] * (labels != IGNORE)
    (full * torch.arange(12.0).view(3, 4)).sum().backward()
    assert torch.allclose(ours, full, atol=1e-6) and torch.allclose(grad, logits.grad, atol=1e-6)


@pytest.mark.parametrize("chunk", [15, 1 << 22])
def test_token_kl_averages_over_target_tokens(monkeypatch, chunk):
    from mubench.api import losses

    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk)
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 1, IGNORE], [1, IGNORE, IGNORE]])
    keep = labels != IGNORE
    p = torch.softmax(teacher / 2, -1)
    per_token = (p * (p.log() - torch.log_softmax(student / 2, -1))).sum(-1)
    assert torch.allclose(token_kl(student, teacher, labels, 2.0), per_token[keep].mean())
    assert token_kl(teacher, teacher, labels).abs().item() < 1e-6


@pytest.fixture(scope="module")
def prepared(generation_registry, task_data):
    """Both tiny tasks loaded, keyed by task."""
    from mubench.harness import Prepared

    out = {}
    for task, model in TASKS.items():
        p = Prepared(generation_registry, f"{task}_tiny", model, 0.1, task_data(task))
        p.load()
        out[task] = p
    return out


@pytest.mark.parametrize("task", TASKS)
def test_the_task_loss_is_the_models_own_loss(prepared, task):
    """Per-example NLL from the task's logits and labels equals transformers' loss for the same example."""
    p = prepared[task]
    model = p.family.build().eval()
    batch = next(iter(p.data(torch.device("cpu")).loader("test", 1, shuffle=False)))
    with torch.no_grad():
        ours = p.task.loss(p.task.forward(model, batch.inputs), batch.inputs)
        if task == "samsum":
            theirs = model(input_ids=batch.inputs["input_ids"], labels=batch.inputs["labels"]).loss
        else:  # the causal model shifts labels itself: give it the unshifted ones
            unshifted = torch.cat([torch.full((1, 1), IGNORE), batch.inputs["labels"]], dim=1)
            theirs = model(input_ids=batch.inputs["input_ids"], labels=unshifted).loss
    assert torch.allclose(ours, theirs[None], atol=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_batched_generation_equals_one_example_at_a_time(prepared, task):
    """Padding (left for the decoder-only model) does not change a greedy generation of the trained θ₀."""
    p = prepared[task]
    model = p.original(torch.device("cpu"), "fp32").model.eval()
    data = p.data(torch.device("cpu"))
    batch = next(iter(data.loader("train", 8, shuffle=False)))
    lengths = (batch.inputs["prompt_mask"] if task == "biofact" else batch.inputs["attention_mask"]).sum(1)
    assert len(set(lengths.tolist())) > 1  # the batch is padded
    with torch.no_grad():
        batched = p.task.generate(model, batch.inputs)
        alone = [p.task.generate(model, b.inputs)[0] for _, b in zip(range(8), data.loader("train", 1, shuffle=False))]
    assert batched == alone


@pytest.mark.parametrize("task", TASKS)
def test_randlabel_gives_d_f_a_retain_examples_target(prepared, task):
    p = prepared[task]
    batch = next(iter(p.data(torch.device("cpu")).loader("train", 16, shuffle=False)))
    forget = torch.zeros(16, dtype=torch.bool)
    forget[[0, 3]] = True
    inputs = p.task.relabel(batch.inputs, forget, "random", torch.Generator().manual_seed(0))
    targets = lambda x: [tuple(row[row != IGNORE].tolist()) for row in x["labels"]]  # noqa: E731
    before, after = targets(batch.inputs), targets(inputs)
    retain_targets = {before[i] for i in range(16) if not forget[i]}
    assert all(after[i] == before[i] for i in range(16) if not forget[i])
    assert all(after[i] in retain_targets for i in (0, 3))
    if task == "biofact":  # the prompt stays: only the continuation changes
        assert torch.equal(inputs["prompt_ids"], batch.inputs["prompt_ids"])
        for i in (0, 3):
            prompt = batch.inputs["prompt_ids"][i][batch.inputs["prompt_mask"][i].bool()]
            assert torch.equal(inputs["input_ids"][i][:len(prompt)], prompt)


def test_generation_overall_score_is_mubench_s_on_one_scale():
    from types import SimpleNamespace

    task = SimpleNamespace(metric="rougeL", overall="generation")
    block = {"test_rougeL": 0.4, "forget_rougeL": 0.1, "forget_knowledge_gap": 0.7}
    assert overall_score(task, block, block) == pytest.approx((0.4 + 0.9 + 0.7) / 3)
    assert overall_score(task, block | {"forget_knowledge_gap": float("nan")}, block) == 0.0


def test_records_hold_texts_and_per_token_arrays(prepared):
    p = prepared["biofact"]
    model = p.family.build().eval()
    batch = next(iter(p.data(torch.device("cpu")).loader("test", 4, shuffle=False)))
    with torch.no_grad():
        records = p.task.evaluate_batch(model, batch.inputs, frozenset({"generation", "token_logprobs", "token_correct"}))
    n_tokens = (batch.inputs["labels"] != IGNORE).sum(1).tolist()
    assert [len(x) for x in records["token_logprobs"]] == n_tokens == [len(x) for x in records["token_correct"]]
    assert all(isinstance(t, str) for t in records["generation"]) and records["reference"] == list(batch.inputs["reference"])
    assert np.allclose(-np.asarray([x.mean() for x in records["token_logprobs"]]), records["loss"].numpy(), atol=1e-5)
