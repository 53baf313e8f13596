"""Every built-in method on digits: real forgetting, valid results, and each method's own mechanics."""
import numpy as np
import pytest
import torch

from mubench.api.losses import distill_kl
from mubench.errors import UserError
from mubench.results import validate_result

FORGETTING = ["neggrad", "randlabel", "badt", "scrub", "salun"]


@pytest.mark.parametrize("method", FORGETTING)
def test_forgetting_methods_lower_forget_accuracy(run_digits, method, registry):
    result, path = run_digits(method)
    validate_result(result, path, registry)
    before, after = result["results"]["original"], result["results"]["unlearned"]
    assert after["forget_acc"] <= before["forget_acc"] - 0.03, (before["forget_acc"], after["forget_acc"])
    assert after["test_acc"] >= before["test_acc"] - 0.05
    assert not result["unlearning"]["budget_exhausted"] and not result["unlearning"]["diverged"]


def test_salun_is_the_main_job_and_forgets_clearly(run_digits):
    result, _ = run_digits("salun")
    before, after = result["results"]["original"], result["results"]["unlearned"]
    assert after["forget_acc"] <= before["forget_acc"] - 0.1
    assert abs(after["test_acc"] - before["test_acc"]) <= 0.03
    assert after["forget_mia_efficacy"] > before["forget_mia_efficacy"] + 0.3
    assert after["overall_score"] > before["overall_score"]


def test_original_leaves_the_model_alone(run_digits, registry):
    result, path = run_digits("original")
    validate_result(result, path, registry)
    assert result["results"]["original"] == result["results"]["unlearned"]
    assert result["unlearning"]["steps"] == 0 and result["config"]["method_args"] == {}


def test_retrain_trains_from_scratch_without_a_budget(run_digits, registry):
    result, path = run_digits("retrain")
    validate_result(result, path, registry)
    assert result["config"]["method_args"]["epochs"] == 30  # the card's train recipe
    assert result["unlearning"]["budget_s"] is None and result["unlearning"]["budget_examples"] is None
    assert result["results"]["unlearned"]["test_acc"] >= result["results"]["original"]["test_acc"] - 0.03


def test_finetune_runs_on_retain_only(run_digits, registry):
    result, path = run_digits("finetune")
    validate_result(result, path, registry)
    assert result["results"]["unlearned"]["retain_acc"] >= 0.95


def test_a_method_stops_at_its_time_budget(run_digits):
    result, _ = run_digits("randlabel", time_budget="0.05")
    assert result["unlearning"]["budget_exhausted"] and result["unlearning"]["budget_s"] == 0.05
    full, _ = run_digits("randlabel")
    assert result["unlearning"]["steps"] < full["unlearning"]["steps"]


def test_the_default_budget_is_the_work_of_retraining(run_digits):
    """Deterministic: the examples retraining processes (the card's train epochs × |D_r|), counted by the loop."""
    result, _ = run_digits("salun")
    budget = result["unlearning"]["budget_examples"]
    assert budget == 30 * result["split"]["n_retain"] and result["unlearning"]["budget_s"] is None
    assert 0 < result["unlearning"]["examples"] <= budget


def test_a_budget_of_examples_stops_a_method_at_the_same_step_every_time(registry, digits_context):
    """Retraining-work budgets are deterministic: a method stops after the same number of examples on any machine."""
    from mubench.loop import Budget

    card, make = digits_context
    reports = []
    for _ in range(2):
        ctx = make()
        ctx.budget = Budget(examples=100)
        cls = registry.method("randlabel")
        reports.append(cls(ctx, cls.resolve_args(card)).unlearn())
    assert all(r.budget_exhausted for r in reports)
    assert reports[0].examples == reports[1].examples == 128 and reports[0].steps == reports[1].steps == 4  # batches of 32


@pytest.fixture(scope="module")
def digits_context(digits_prepared):
    """Makes a fresh Context on digits (5% D_f) around the cached original model."""
    cpu = torch.device("cpu")

    def make():
        return digits_prepared.context(digits_prepared.original(cpu, "fp32").model, 0, cpu, "fp32")

    return digits_prepared.card, make


def test_salun_moves_only_salient_weights(registry, digits_context):
    card, make = digits_context
    ctx = make()
    before = [p.detach().clone() for p in ctx.model.parameters()]
    salun = registry.method("salun")
    method = salun(ctx, salun.resolve_args(card, {"epochs": 1, "mask_ratio": 0.3}))
    method.unlearn()
    moved = torch.cat([(p.detach() != b).flatten() for p, b in zip(ctx.model.parameters(), before)])
    salient = torch.cat([m.bool().flatten() for m in method.masks])
    assert salient.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert not moved[~salient].any()  # weight decay included: masked weights stay exactly at θ₀
    assert moved[salient].float().mean() > 0.5


def test_badt_pulls_d_f_towards_the_incompetent_teacher(registry, digits_context):
    card, make = digits_context
    ctx = make()
    badt = registry.method("badt")
    method = badt(ctx, badt.resolve_args(card))
    method.setup()
    batch = next(iter(ctx.data.loader("forget", 64, shuffle=False)))
    gap = lambda: distill_kl(method.teacher_logits(ctx.model, batch), method.teacher_logits(method.incompetent, batch)).item()  # noqa: E731
    start = gap()
    from mubench.loop import optimise
    optimise(method, ctx.model, method.hp.epochs, ctx.device, ctx.precision)
    assert gap() < 0.5 * start


def test_scrub_runs_max_passes_before_min_passes(registry, digits_context):
    card, make = digits_context
    scrub = registry.method("scrub")
    method = scrub(make(), scrub.resolve_args(card, {"msteps": 2, "epochs": 4}))
    phases = [[p.phase for p in method.passes(epoch)] for epoch in range(4)]
    assert phases == [["max", "min"], ["max", "min"], ["min"], ["min"]]


def test_relabel_modes(digits_context):
    """``random`` draws over all K classes as the authors do (the true one 1/K of the time); the others never keep it."""
    _, make = digits_context
    ctx = make()
    labels = torch.arange(10).repeat(1000)
    forget = torch.arange(len(labels)) % 2 == 0
    inputs = {"labels": labels}
    for mode in ("random", "random_wrong", "shift"):
        new = ctx.task.relabel(inputs, forget, mode, ctx.generator)["labels"]
        assert torch.equal(new[~forget], labels[~forget])
        kept = (new[forget] == labels[forget]).float().mean().item()
        if mode == "random":
            assert kept == pytest.approx(0.1, abs=0.02)
            assert torch.bincount(new[forget], minlength=10).min() > 400  # every class, the true one included
        else:
            assert kept == 0.0
    shifted = ctx.task.relabel(inputs, forget, "shift", ctx.generator)["labels"]
    assert torch.equal(shifted[forget], (labels[forget] + 1) % 10)


@pytest.mark.parametrize("overrides, message", [
    ({"mask_ration": 0.1}, "unknown argument of method 'salun' in --method-args 'mask_ration'. Did you mean 'mask_ratio'?"),
    ({"lr": "fast"}, "--method-args: lr: expected float, got 'fast'"),
    ({"epochs": 2.5}, "--method-args: epochs: expected int, got 2.5"),
    ({"relabel": "sideways"}, "relabel must be one of random, random_wrong, shift"),
    ({"mask_ratio": 0}, "mask_ratio must lie in (0, 1]"),
    ({"optimizer": "lion"}, "optimizer must be one of sgd, adam, adamw"),
])
def test_bad_method_args(registry, overrides, message):
    card = registry.card("digits")
    with pytest.raises(UserError) as info:
        registry.method("salun").resolve_args(card, overrides)
    assert message in str(info.value)


def test_card_overrides_layer_over_method_defaults(registry):
    card = registry.card("digits")
    args = registry.method("salun").resolve_args(card, {"epochs": 3})
    assert args["epochs"] == 3                                       # --method-args
    assert args["batch_size"] == card.data["methods"]["salun"]["batch_size"]  # methods.salun
    assert args["optimizer"] == card.data["unlearn"]["optimizer"]  # the card's unlearn recipe
    assert args["mask_ratio"] == 0.5                                 # the method's own default
    assert np.isclose(registry.method("scrub").resolve_args(card)["temperature"], 4.0)


def test_a_method_that_cannot_apply_says_so_before_it_starts(registry, tmp_path):
    import yaml
    from tests_support import digits_card_dict

    from mubench.api import TaskType, hookimpl
    from mubench.api.registry import Registry
    from mubench.harness import RunConfig, run

    class Scoring(TaskType):  # a task type with no notion of a wrong target
        name = "scoring"

    class Plugin:
        @hookimpl
        def mubench_task_types(self):
            return [Scoring]

    card = digits_card_dict() | {"task": "scores", "task_type": "scoring"}
    (tmp_path / "scores.yaml").write_text(yaml.safe_dump(card))
    custom = Registry(include_paths=[tmp_path], plugins=[Plugin()])
    for method in ("randlabel", "salun"):
        with pytest.raises(UserError, match=f"method '{method}' cannot run on task 'scores': task type 'scoring' cannot corrupt targets"):
            run(RunConfig(task="scores", method=method, output_path=tmp_path / "out"), custom)
    assert not (tmp_path / "out").exists()


def test_the_retrain_budget_is_derived_from_the_card(registry):
    card, salun, retrain = registry.card("digits"), registry.method("salun"), registry.method("retrain")
    from mubench.harness import unlearning_budget

    assert unlearning_budget("retrain", salun, card, 900).examples == card.data["train"]["epochs"] * 900
    assert unlearning_budget(2.5, salun, card, 900).seconds == 2.5
    for unlimited in (unlearning_budget("none", salun, card, 900), unlearning_budget("retrain", retrain, card, 900)):
        assert unlimited.seconds is None and unlimited.examples is None


def test_results_leave_out_hyperparameters_that_have_no_effect(run_digits, registry):
    from mubench.api import Method

    class Edit(Method):  # all its work in setup(): the optimiser's settings mean nothing
        name, trains, defaults = "edit", False, Method.defaults | {"alpha": 1.0}

    neggrad = registry.method("neggrad")
    assert neggrad.unused_args(dict(neggrad.defaults, optimizer="adam")) == {"momentum"}
    assert neggrad.unused_args(dict(neggrad.defaults, optimizer="sgd")) == set()
    unused = Edit.unused_args(Edit.defaults)
    assert {"lr", "optimizer", "momentum", "epochs"} <= unused and not {"alpha", "batch_size"} & unused
    result, _ = run_digits("neggrad")  # digits unlearns with Adam
    args, sources = result["config"]["method_args"], result["config"]["method_args_sources"]
    assert "momentum" not in args and "momentum" not in sources and args["optimizer"] == "adam" and "lr" in args
