"""Each method against its authors: loss, gradients and one optimiser step equal an independent
re-implementation of the authors' formula, written here from the paper and their public code, on a
fixed tiny model (with dead hidden units) and a fixed batch of real digits.

Sources: NegGrad (Golatkar et al. 2020, −CE on D_f); RandLabel (SalUn's and Deep Unlearn's code:
``torch.randint(0, num_classes)`` for D_f); Bad-T (Chundawat et al., ``UnlearnerLoss``: KL with
``F.kl_div``'s default ``mean``); SCRUB (Kurmanji et al., ``DistillKL``: summed KL / batch × T²;
max step −KL, min step γ·CE + α·KL); SalUn (Fan et al., ``generate_mask.py``: |∑ grad of −CE over
D_f| ranked over the whole model, the top ⌊N·ratio⌋ kept; then RandLabel with masked gradients).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from fidelity_support import TOL, K, assert_close, grads_of, method, one_step, reference_step, tiny_mlp

from mubench.data import Batch


def test_neggrad(registry, setting):
    card, ctx, batch = setting
    m = method(registry, card, ctx, "neggrad", lr=0.01)
    twin = copy.deepcopy(ctx.model)
    x, y = batch.inputs["pixel_values"], batch.inputs["labels"]
    ours, theirs = m.loss(batch, "forget"), -F.cross_entropy(twin(x), y)
    assert abs(ours.item() - theirs.item()) < TOL
    assert_close(grads_of(m.loss(batch, "forget"), ctx.model), grads_of(-F.cross_entropy(twin(x), y), twin))
    reference_grads = grads_of(-F.cross_entropy(twin(x), y), twin)
    one_step(m, batch, "forget")
    reference_step(twin, reference_grads, m.hp.optimizer, m.hp.lr, weight_decay=m.hp.weight_decay)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))


def randlabel_targets(y, forget, seed):
    """SalUn's / Deep Unlearn's relabelling: a uniform draw over all classes for every D_f example."""
    return torch.where(forget, torch.randint(0, K, y.shape, generator=torch.Generator().manual_seed(seed)), y)


def test_randlabel(registry, setting):
    card, ctx, batch = setting
    m = method(registry, card, ctx, "randlabel", optimizer="sgd", lr=0.05, momentum=0.9)
    twin = copy.deepcopy(ctx.model)
    x, y = batch.inputs["pixel_values"], batch.inputs["labels"]
    targets = randlabel_targets(y, batch.forget, seed=0)
    ctx.generator.manual_seed(0)
    ours = m.loss(batch, "train")
    theirs = F.cross_entropy(twin(x), targets)
    assert abs(ours.item() - theirs.item()) < TOL
    ctx.generator.manual_seed(0)
    ours_grads = grads_of(m.loss(batch, "train"), ctx.model)
    reference_grads = grads_of(F.cross_entropy(twin(x), targets), twin)
    assert_close(ours_grads, reference_grads)
    ctx.generator.manual_seed(0)
    one_step(m, batch, "train")
    reference_step(twin, reference_grads, "sgd", 0.05, momentum=0.9, weight_decay=m.hp.weight_decay)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))


def authors_unlearner_loss(output, labels, full_teacher_logits, unlearn_teacher_logits, temperature):
    """Bad-T's UnlearnerLoss as in the authors' code (F.kl_div with its default reduction, 'mean')."""
    labels = labels.float().unsqueeze(1)
    f_teacher_out = F.softmax(full_teacher_logits / temperature, dim=1)
    u_teacher_out = F.softmax(unlearn_teacher_logits / temperature, dim=1)
    overall_teacher_out = labels * u_teacher_out + (1 - labels) * f_teacher_out
    student_out = F.log_softmax(output / temperature, dim=1)
    return F.kl_div(student_out, overall_teacher_out, reduction="mean")


@pytest.mark.filterwarnings("ignore:reduction")  # the authors' 'mean' reduction, kept on purpose
def test_badt_is_the_authors_loss_times_the_number_of_classes(registry, setting):
    """mubench keeps the KL per example (batchmean); the authors' 'mean' also divides by K (documented)."""
    card, ctx, batch = setting
    m = method(registry, card, ctx, "badt", temperature=2.0, optimizer="sgd", lr=0.1, momentum=0.0)
    m.setup()
    twin = copy.deepcopy(ctx.model)
    x = batch.inputs["pixel_values"]
    with torch.no_grad():
        full, unlearn = m.competent(x), m.incompetent(x)
    reference = lambda model: K * authors_unlearner_loss(model(x), batch.forget, full, unlearn, 2.0)  # noqa: E731
    assert abs(m.loss(batch, "mixed").item() - reference(twin).item()) < TOL
    reference_grads = grads_of(reference(twin), twin)
    assert_close(grads_of(m.loss(batch, "mixed"), ctx.model), reference_grads)
    one_step(m, batch, "mixed")
    reference_step(twin, reference_grads, "sgd", 0.1, weight_decay=m.hp.weight_decay)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))


def authors_distill_kl(y_s, y_t, temperature):
    """SCRUB's DistillKL: summed KL over the batch, divided by the batch size, times T²."""
    p_s = F.log_softmax(y_s / temperature, dim=1)
    p_t = F.softmax(y_t / temperature, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * temperature**2 / y_s.shape[0]


@pytest.mark.parametrize("phase", ["max", "min"])
def test_scrub(registry, setting, phase):
    card, ctx, batch = setting
    m = method(registry, card, ctx, "scrub", alpha=0.7, gamma=0.9, temperature=4.0, optimizer="sgd", lr=0.05, momentum=0.9,
               weight_decay=5e-4)
    m.setup()
    twin = copy.deepcopy(ctx.model)
    x, y = batch.inputs["pixel_values"], batch.inputs["labels"]
    with torch.no_grad():
        teacher = m.teacher(x)

    def reference(model):
        logits = model(x)
        kl = authors_distill_kl(logits, teacher, 4.0)
        return -kl if phase == "max" else 0.9 * F.cross_entropy(logits, y) + 0.7 * kl

    ctx.model.zero_grad()
    with torch.no_grad():  # move the student off the teacher, or the KL and its gradient are zero
        for p, q in zip(ctx.model.parameters(), twin.parameters()):
            noise = 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
            p.add_(noise)
            q.add_(noise)
    assert abs(m.loss(batch, phase).item() - reference(twin).item()) < TOL
    reference_grads = grads_of(reference(twin), twin)
    assert_close(grads_of(m.loss(batch, phase), ctx.model), reference_grads)
    one_step(m, batch, phase)
    reference_step(twin, reference_grads, "sgd", 0.05, momentum=0.9, weight_decay=5e-4)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))


def authors_mask(model, batches, ratio):
    """SalUn's generate_mask.py: |Σ ∇(−CE)| over D_f, ranked over the whole model, ranks below ⌊N·ratio⌋ kept."""
    model.zero_grad()
    for x, y in batches:
        (-F.cross_entropy(model(x), y)).backward()
    gradients = [p.grad.abs() for p in model.parameters()]
    all_elements = -torch.cat([g.flatten() for g in gradients])
    threshold_index = int(len(all_elements) * ratio)
    positions = torch.argsort(all_elements, stable=True)  # the authors' argsort; ties in parameter order
    ranks = torch.argsort(positions)
    masks, start = [], 0
    for g in gradients:
        masks.append((ranks[start:start + g.numel()] < threshold_index).view_as(g).float())
        start += g.numel()
    model.zero_grad()
    return masks, gradients


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_salun_mask_keeps_exactly_the_authors_weights(registry, setting, ratio):
    card, ctx, batch = setting
    m = method(registry, card, ctx, "salun", mask_ratio=ratio, batch_size=32)
    twin = copy.deepcopy(ctx.model)
    m.setup()
    forget = ctx.data.loader("forget", 32, shuffle=False)
    reference, gradients = authors_mask(twin, [(b.inputs["pixel_values"], b.inputs["labels"]) for b in forget], ratio)
    n = sum(p.numel() for p in ctx.model.parameters())
    assert sum((g == 0).sum().item() for g in gradients) / n > 0.3  # the dead units' weights tie at zero
    assert sum(mask.sum().item() for mask in m.masks) == int(n * ratio)
    for ours, theirs in zip(m.masks, reference):
        assert torch.equal(ours, theirs)


def test_salun_step_is_randlabel_on_the_masked_gradient(registry, setting):
    card, ctx, batch = setting
    m = method(registry, card, ctx, "salun", mask_ratio=0.5, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)
    m.setup()
    twin = copy.deepcopy(ctx.model)
    x, y = batch.inputs["pixel_values"], batch.inputs["labels"]
    targets = randlabel_targets(y, batch.forget, seed=3)
    raw = grads_of(F.cross_entropy(twin(x), targets), twin)
    masked = [(g + 5e-4 * p.detach()) * mask for g, p, mask in zip(raw, twin.parameters(), m.masks)]
    ctx.generator.manual_seed(3)
    one_step(m, batch, "train")
    reference_step(twin, masked, "sgd", 0.05, momentum=0.9)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))
    moved = [(p != q) for p, q in zip(ctx.model.parameters(), copy.deepcopy(tiny_mlp()).parameters())]
    assert all(not (mv & (mask == 0)).any() for mv, mask in zip(moved, m.masks))


def test_salun_and_randlabel_no_longer_coincide_on_the_digits_cnn(registry, digits_prepared):
    """On the digits CNN most D_f gradients are exactly zero; the mask still keeps exactly half the weights."""
    cpu = torch.device("cpu")
    ctx = digits_prepared.context(digits_prepared.original(cpu, "fp32").model, 0, cpu, "fp32")
    m = method(registry, digits_prepared.card, ctx, "salun")
    m.setup()
    n = sum(p.numel() for p in m.params)
    assert sum(mask.sum().item() for mask in m.masks) == int(n * m.hp.mask_ratio) < n


def test_ngplus_is_deep_unlearns_weighted_difference_on_a_retain_and_a_forget_batch(registry, setting):
    """Deep Unlearn's ``run_neggrad_epoch``: α·CE(D_r batch) − (1 − α)·CE(D_f batch), one SGD step (momentum 0.9)."""
    from mubench.api.method import Pair

    card, ctx, batch = setting
    m = method(registry, card, ctx, "ngplus", optimizer="sgd", lr=0.01, momentum=0.9, alpha=0.95)
    twin = copy.deepcopy(ctx.model)
    x, y, f = batch.inputs["pixel_values"], batch.inputs["labels"], batch.forget
    pair = Pair(Batch({"pixel_values": x[f], "labels": y[f]}, f[f]), Batch({"pixel_values": x[~f], "labels": y[~f]}, f[~f]))

    def theirs():
        return 0.95 * F.cross_entropy(twin(x[~f]), y[~f]) - 0.05 * F.cross_entropy(twin(x[f]), y[f])

    assert abs(m.loss(pair, "pair").item() - theirs().item()) < TOL
    assert_close(grads_of(m.loss(pair, "pair"), ctx.model), grads_of(theirs(), twin))
    reference_grads = grads_of(theirs(), twin)
    one_step(m, pair, "pair")
    reference_step(twin, reference_grads, "sgd", 0.01, momentum=0.9)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))


def test_ngplus_passes_over_d_r_with_d_f_batches_cycled_beside_it(registry, setting):
    card, ctx, _ = setting
    m = method(registry, card, ctx, "ngplus", batch_size=64)
    [(phase, loader)] = m.passes(0)
    pairs = list(loader)
    n_retain, n_forget = len(ctx.data.retain), len(ctx.data.forget)
    assert phase == "pair" and len(pairs) == len(loader) == -(-n_retain // 64) > -(-n_forget // 64)
    assert sum(len(p.retain) for p in pairs) == n_retain  # D_r once
    assert all(p.forget.forget.all() and not p.retain.forget.any() for p in pairs)
    assert sum(len(p.forget) for p in pairs) > n_forget  # D_f restarted beside it
    with pytest.raises(Exception, match="alpha weighs D_r against D_f"):
        method(registry, card, ctx, "ngplus", alpha=1.5)


def test_l1sparse_is_the_authors_ft_l1_with_its_decaying_penalty(registry, setting):
    """Jia et al.'s ``FT_iter(with_l1=True)``: CE on D_r + α_t·‖θ‖₁ (``torch.linalg.norm`` of all parameters, ord 1),
    α_t = α(1 − e/(E − E₀)) for e < E − E₀, α when E₀ = E, else 0; one SGD step with momentum and weight decay."""
    card, ctx, batch = setting
    m = method(registry, card, ctx, "l1sparse", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, alpha=0.01,
               epochs=10, no_l1_epochs=2)
    assert [m.penalty_weight(e) for e in (0, 4, 7, 8, 9)] == [0.01, 0.01 * (1 - 4 / 8), 0.01 * (1 - 7 / 8), 0.0, 0.0]
    assert method(registry, card, ctx, "l1sparse", alpha=0.01, epochs=3, no_l1_epochs=3).penalty_weight(2) == 0.01
    with pytest.raises(Exception, match="no_l1_epochs lies between 0 and epochs"):
        method(registry, card, ctx, "l1sparse", epochs=3, no_l1_epochs=4)

    twin = copy.deepcopy(ctx.model)
    keep = ~batch.forget
    retain = Batch({"pixel_values": batch.inputs["pixel_values"][keep], "labels": batch.inputs["labels"][keep]}, batch.forget[keep])
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    m.passes(4)

    def theirs():
        flat = torch.cat([p.view(-1) for p in twin.parameters()])
        return F.cross_entropy(twin(x), y) + 0.01 * (1 - 4 / 8) * torch.linalg.norm(flat, ord=1)

    assert abs(m.loss(retain, "retain").item() - theirs().item()) < TOL
    assert_close(grads_of(m.loss(retain, "retain"), ctx.model), grads_of(theirs(), twin))
    reference_grads = grads_of(theirs(), twin)
    one_step(m, retain, "retain")
    reference_step(twin, reference_grads, "sgd", 0.01, momentum=0.9, weight_decay=5e-4)
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))
    m.passes(9)  # past the decay: plain fine-tuning
    assert abs(m.loss(retain, "retain").item() - F.cross_entropy(ctx.model(x), y).item()) < TOL


def test_ssd_dampens_exactly_the_authors_weights(registry, setting):
    """Foster et al.'s ``calc_importance`` (mean over batches of grad² of CE, eval mode) on D_f and on the whole
    training set, then ``modify_weight``: where I_f > α·I_D, w ← w · min(1, λ·I_D/I_f)."""
    card, ctx, _ = setting
    twin = copy.deepcopy(ctx.model)
    m = method(registry, card, ctx, "ssd", batch_size=64, alpha=10.0, dampening=1.0)

    def calc_importance(loader):
        importances = [torch.zeros_like(p) for p in twin.parameters()]
        for batch in loader:
            twin.zero_grad()
            F.cross_entropy(twin(batch.inputs["pixel_values"]), batch.inputs["labels"]).backward()
            for imp, p in zip(importances, twin.parameters()):
                if p.grad is not None:
                    imp += p.grad.clone().pow(2)
        return [imp / len(loader) for imp in importances]

    twin.eval()
    forget = calc_importance(ctx.data.loader("forget", 64, shuffle=False))
    whole = calc_importance(ctx.data.loader("train", 64, shuffle=False))
    with torch.no_grad():
        for p, fimp, oimp in zip(twin.parameters(), forget, whole):
            locations = torch.where(fimp > oimp * 10.0)
            update = (oimp * 1.0 / fimp).pow(1)[locations]
            update[torch.where(update > 1)] = 1
            p[locations] = p[locations] * update

    before = [p.detach().clone() for p in ctx.model.parameters()]
    report = m.unlearn()
    assert report.steps == 0
    assert_close(list(ctx.model.parameters()), list(twin.parameters()))
    changed = sum(int((p != q).sum()) for p, q in zip(ctx.model.parameters(), before))
    assert changed > 0  # some weights were dampened, and none grew:
    assert all(bool((p.abs() <= q.abs() + 1e-12).all()) for p, q in zip(ctx.model.parameters(), before))
    for p, q, fimp, oimp in zip(ctx.model.parameters(), before, forget, whole):  # the unselected weights: exactly θ₀'s
        kept = ~(fimp > oimp * 10.0)
        assert torch.equal(p[kept], q[kept])
