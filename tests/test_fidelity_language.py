"""OpenUnlearning's language-model methods against their authors: loss, gradients and one AdamW step equal an
independent re-implementation written here from OpenUnlearning's public code (locuslab/open-unlearning,
``src/trainer``), on the tiny Llama model of the BioFact fixture and a fixed D_f and D_r batch.

The references see the batch as transformers does: ``input_ids`` with labels aligned to them (-100 on the prompt
and padding), the model's own shift, its own ``loss``, so that mubench's shifted labels are checked too.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from fidelity_support import TOL, assert_close, grads_of, method, params_close, reference_step, saved
from torch import nn

from mubench.api import Context
from mubench.api.losses import IGNORE
from mubench.api.method import Pair


@pytest.fixture(scope="module")
def biofact(registry, task_data):
    from mubench.harness import Prepared

    prepared = Prepared(registry, "biofact", None, 0.1, task_data("biofact"))
    prepared.load()
    return prepared


@pytest.fixture
def lm_setting(biofact):
    """A fresh tiny Llama, θ₀ a copy of it moved by a little noise (or the log ratios and KLs are zero), and a pair of
    a D_f batch and a D_r batch of three people each."""
    cpu = torch.device("cpu")
    data = biofact.data(cpu)
    torch.manual_seed(0)
    model = biofact.family.build()
    ctx = Context(biofact.task, model, data, cpu, "fp32", biofact.family.build, torch.Generator().manual_seed(0))
    pair = Pair(next(iter(data.loader("forget", 3, shuffle=False))), next(iter(data.loader("retain", 3, shuffle=False))))
    return biofact.card, ctx, pair


def moved(model):
    """θ₀ for the reference: the model as it is; then the student moves off it by a fixed small noise."""
    reference = copy.deepcopy(model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return reference


def hf(batch) -> dict:
    """The batch as transformers' causal LM takes it: labels aligned with ``input_ids`` (the model shifts them)."""
    labels = torch.cat([torch.full((len(batch), 1), IGNORE), batch.inputs["labels"]], dim=1)
    return {"input_ids": batch.inputs["input_ids"], "attention_mask": batch.inputs["attention_mask"], "labels": labels}


def compute_batch_nll(model, inputs):
    """OpenUnlearning's ``compute_batch_nll``: the summed NLL of each sequence."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    shifted_labels = inputs["labels"][..., 1:].contiguous()
    logits = logits[..., :-1, :].contiguous()
    return nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(logits.transpose(-1, -2), shifted_labels).sum(dim=-1)


def nll(model, inputs):
    """transformers' ``outputs.loss``: the mean NLL over all the batch's target tokens."""
    return model(**inputs).loss


def check(m, model, twin, pair, theirs, lr):
    """Loss, gradients and one step of ``m``'s optimiser (AdamW, the methods' own) against ``theirs(twin)``; each of ``m``'s
    losses draws what it draws from the same generator state."""
    state = m.ctx.generator.get_state()

    def ours():
        m.ctx.generator.set_state(state)
        return m.loss(pair, "pair")

    assert abs(ours().item() - theirs().item()) < TOL
    reference = grads_of(theirs(), twin)
    assert_close(grads_of(ours(), model), reference)
    from mubench.loop import objective_optimizer

    optimizer, _ = objective_optimizer(m, [p for p in model.parameters() if p.requires_grad])
    model.zero_grad(set_to_none=True)
    ours().backward()
    optimizer.step()
    reference_step(twin, reference, m.hp.optimizer, lr, momentum=m.hp.momentum, weight_decay=m.hp.weight_decay)
    params_close(model, twin)


ADAMW = dict(optimizer="adamw", lr=1e-3, weight_decay=0.01)


@pytest.mark.parametrize("retain_loss", ["nll", "kl"])
def test_graddiff(registry, lm_setting, retain_loss):
    """``GradDiff``: γ · (−loss on D_f) + α · (loss, or ``compute_kl_divergence`` to θ₀, on D_r); the KL here over the
    target tokens (theirs over every position: a documented departure)."""
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "graddiff", gamma=0.7, alpha=1.3, retain_loss=retain_loss, **ADAMW)
    m.setup()
    reference = moved(ctx.model) if retain_loss == "kl" else None
    if reference is not None:
        m.reference = reference
    twin = copy.deepcopy(ctx.model)
    f, r = hf(pair.forget), hf(pair.retain)

    def kl_on_targets():
        with torch.no_grad():
            ref = F.log_softmax(reference(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, dim=-1)
        current = F.log_softmax(twin(input_ids=r["input_ids"], attention_mask=r["attention_mask"]).logits, dim=-1)
        keep = r["labels"][:, 1:] != IGNORE
        rows_ref, rows_cur = ref[:, :-1][keep], current[:, :-1][keep]
        return F.kl_div(rows_cur, rows_ref, reduction="batchmean", log_target=True)

    def theirs():
        retain = nll(twin, r) if retain_loss == "nll" else kl_on_targets()
        return 0.7 * -nll(twin, f) + 1.3 * retain

    check(m, ctx.model, twin, pair, theirs, 1e-3)


def npo_loss(model, ref_model, win, lose, beta):
    """OpenUnlearning's ``compute_dpo_loss`` (``win`` None for NPO)."""
    win_log_ratio = 0.0
    if win is not None:
        with torch.no_grad():
            win_ref = compute_batch_nll(ref_model, win)
        win_log_ratio = -(compute_batch_nll(model, win) - win_ref)
    with torch.no_grad():
        lose_ref = compute_batch_nll(ref_model, lose)
    lose_log_ratio = -(compute_batch_nll(model, lose) - lose_ref)
    return -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()


def test_npo(registry, lm_setting):
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "npo", beta=0.1, gamma=1.0, alpha=1.0, **ADAMW)
    m.setup()
    m.reference = moved(ctx.model)
    twin = copy.deepcopy(ctx.model)
    f, r = hf(pair.forget), hf(pair.retain)
    check(m, ctx.model, twin, pair, lambda: npo_loss(twin, m.reference, None, f, 0.1) + nll(twin, r), 1e-3)


def test_simnpo(registry, lm_setting):
    """``SimNPO``: −(2/β) · mean log σ(β · (NLL_sum / |y| − δ)) with |y| the count of labels that are not -100."""
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "simnpo", beta=4.5, delta=0.3, gamma=0.125, alpha=1.0, **ADAMW)
    m.setup()
    twin = copy.deepcopy(ctx.model)
    f, r = hf(pair.forget), hf(pair.retain)

    def theirs():
        loss = compute_batch_nll(twin, f) / (f["labels"] != -100).sum(-1) - 0.3
        return 0.125 * (-F.logsigmoid(4.5 * loss).mean() * 2 / 4.5) + nll(twin, r)

    check(m, ctx.model, twin, pair, theirs, 1e-3)


def test_idk_dpo_prefers_the_cards_refusals(registry, lm_setting, biofact):
    """``DPO`` with TOFU's idk alternates: the preferred answer of each D_f prompt is a refusal of the card drawn for it,
    tokenized here on its own (the prompt, the refusal, EOS; -100 on the prompt and padding)."""
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "dpo", beta=0.1, **ADAMW)
    m.setup()
    m.reference = moved(ctx.model)
    twin = copy.deepcopy(ctx.model)
    refusals = card.data["generation"]["refusals"]
    drawn = torch.randint(len(refusals), (len(pair.forget),), generator=saved(ctx.generator)).tolist()
    tokenizer, pad = biofact.task.processor, biofact.task.processor.pad_token_id
    sequences, labels = [], []
    for ids, mask, choice in zip(pair.forget.inputs["prompt_ids"], pair.forget.inputs["prompt_mask"], drawn):
        prompt = ids[mask.bool()].tolist()
        answer = tokenizer(refusals[choice], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        sequences.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, sequences))
    alternate = {"input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in sequences]),
                 "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
                 "labels": torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])}
    f, r = hf(pair.forget), hf(pair.retain)
    check(m, ctx.model, twin, pair, lambda: npo_loss(twin, m.reference, alternate, f, 0.1) + nll(twin, r), 1e-3)
    silent = copy.copy(biofact.task)
    silent.generation = {k: v for k, v in silent.generation.items() if k != "refusals"}
    assert "names no refusal answers" in registry.method("dpo").unsupported(silent, None)


def test_rmu_steers_the_middle_layer(registry, lm_setting):
    """``RMU``: at the hooked layer (here the middle of two: layer 0, whose output is transformers' hidden state 1),
    MSE to c · u (u = ``rand`` normalised) on D_f and to θ₀'s states on D_r, each ``compute_activation_loss``
    (mean over the hidden size, summed over target positions, over their count, mean over the batch)."""
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "rmu", steering=6.5, gamma=1.0, alpha=2.0, **ADAMW)
    draws = saved(ctx.generator)
    m.setup()
    assert m.module_name() == "model.layers.0"
    m.reference = moved(ctx.model)
    m.reference_module = m.reference.model.layers[0]
    twin = copy.deepcopy(ctx.model)
    f, r = hf(pair.forget), hf(pair.retain)
    u = torch.rand(1, 1, twin.config.hidden_size, generator=draws)
    control = u / torch.norm(u) * 6.5

    def activation_loss(a, b, mask):
        squared = F.mse_loss(a, b, reduction="none")
        return ((squared * mask.unsqueeze(-1).expand_as(squared)).mean(dim=2).sum(dim=1) / mask.sum(dim=-1)).mean()

    def states(model, inputs):
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True).hidden_states[1]

    def theirs():
        forget = activation_loss(states(twin, f), control.expand_as(states(twin, f)), f["labels"] != -100)
        with torch.no_grad():
            reference = states(m.reference, r)
        return forget + 2.0 * activation_loss(states(twin, r), reference, r["labels"] != -100)

    check(m, ctx.model, twin, pair, theirs, 1e-3)


def test_undial(registry, lm_setting):
    """``compute_undial_loss``: CE of the student against softmax(θ₀'s logits − β · onehot(label)), averaged over the
    target tokens (theirs over every position: a documented departure)."""
    card, ctx, pair = lm_setting
    m = method(registry, card, ctx, "undial", beta=10.0, alpha=0.0, **ADAMW)
    m.setup()
    m.reference = moved(ctx.model)
    twin = copy.deepcopy(ctx.model)
    f = hf(pair.forget)

    def theirs():
        logits = twin(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
        with torch.no_grad():
            teacher = m.reference(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits[..., :-1, :]
        shift_labels, shift_logits = f["labels"][..., 1:], logits[..., :-1, :]
        mask = torch.zeros_like(teacher)
        batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
        seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
        mask[batch_idx, seq_idx, shift_labels.clamp(min=0).unsqueeze(-1)] = 1.0
        soft_label = F.softmax(teacher - mask * 10.0, dim=-1)
        keep = shift_labels != -100
        return nn.CrossEntropyLoss()(shift_logits[keep], soft_label[keep])

    check(m, ctx.model, twin, pair, theirs, 1e-3)


@pytest.mark.parametrize("name", ["wga", "satimp"])
def test_wga_and_satimp(registry, lm_setting, name):
    """``compute_wga_loss`` (weight p^β) and ``compute_satimp_loss`` (p^β₁ · (1 − p)^β₂), detached, over the target tokens."""
    card, ctx, pair = lm_setting
    knobs = {"beta": 2.0} if name == "wga" else {"beta1": 5.0, "beta2": 1.5}
    m = method(registry, card, ctx, name, gamma=0.5, alpha=1.0, **knobs, **ADAMW)
    m.setup()
    twin = copy.deepcopy(ctx.model)
    f, r = hf(pair.forget), hf(pair.retain)

    def theirs():
        logits = twin(input_ids=f["input_ids"], attention_mask=f["attention_mask"]).logits
        shift_logits, shift_labels = logits[..., :-1, :].contiguous(), f["labels"][..., 1:].contiguous()
        lm_loss = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(shift_logits.view(-1, shift_logits.size(-1)),
                                                                           shift_labels.view(-1))
        p = (-lm_loss).exp().detach()
        weight = p ** 2.0 if name == "wga" else p ** 5.0 * (1 - p) ** 1.5
        forget = -(weight * lm_loss)[shift_labels.view(-1) != -100].mean()
        return 0.5 * forget + nll(twin, r)

    check(m, ctx.model, twin, pair, theirs, 1e-3)


def test_npo_on_class_logits_is_the_same_formula(registry, setting):
    """On a classifier the target's log-likelihood is log p(y): NPO's forget loss with it, and the mean CE as NLL (SGD
    here: Adam's first step divides gradients of 1e-9 by their own size, which rounding then decides; pixels scaled to
    [0, 1], or the random MLP's losses near 50 leave float32 rounding above 1e-5 in the gradients)."""
    from fidelity_support import rows

    card, ctx, batch = setting
    batch.inputs["pixel_values"] = batch.inputs["pixel_values"] / 16
    m = method(registry, card, ctx, "npo", beta=0.5, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    m.setup()
    m.reference = moved(ctx.model)
    twin = copy.deepcopy(ctx.model)
    forget, retain = rows(batch, True), rows(batch, False)
    pair = Pair(forget, retain)
    xf, yf = forget.inputs["pixel_values"], forget.inputs["labels"]

    def theirs():
        ours = -F.cross_entropy(twin(xf), yf, reduction="none")
        with torch.no_grad():
            ref = -F.cross_entropy(m.reference(xf), yf, reduction="none")
        forget_loss = -2 / 0.5 * F.logsigmoid(-0.5 * (ours - ref)).mean()
        return forget_loss + F.cross_entropy(twin(retain.inputs["pixel_values"]), retain.inputs["labels"])

    check(m, ctx.model, twin, pair, theirs, 0.05)
