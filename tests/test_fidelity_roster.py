"""Deep Unlearn's roster against its authors: each method's loss, gradients, one optimiser step, edits of the weights and
schedules equal an independent re-implementation written here from Deep Unlearn's public code (xcadet/deepunlearn,
``munl/unlearning``), on a fixed tiny model and a fixed batch of real digits.

Where a method draws random numbers, the reference redraws them from a copy of the run's generator in the order the
method documents; where the authors call torch (its schedulers, its pruning, scikit-learn's class weights), so does
the reference.
"""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fidelity_support import (
    TOL,
    assert_close,
    check_step,
    grads_of,
    method,
    one_step,
    params_close,
    reference_step,
    rows,
    saved,
    tiny_cnn,
    tiny_mlp,
)
from torch import nn


def lrs_of(scheduler_class, epochs, **kwargs):
    """The learning rate of each epoch under a torch scheduler stepped once per epoch (base rate 1)."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = scheduler_class(optimizer, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


# --- CT ---------------------------------------------------------------------------------------------------------------

def test_ct_transposes_every_convolution_then_fine_tunes_with_a_cosine(registry, conv_setting):
    """``KGLTop5``: ``module.weight = Parameter(module.weight.swapaxes(2, 3))`` for every Conv2d, then CE on D_r by SGD
    under ``CosineAnnealingLR(T_max=epochs)``."""
    card, ctx, batch = conv_setting
    twin = copy.deepcopy(ctx.model)
    m = method(registry, card, ctx, "ct", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=4)
    m.setup()
    for module in twin.modules():
        if isinstance(module, nn.Conv2d):
            module.weight = nn.Parameter(module.weight.swapaxes(2, 3))
    params_close(ctx.model, twin)
    assert not torch.equal(ctx.model[0].weight, copy.deepcopy(tiny_cnn())[0].weight)  # the kernels did change

    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.train()
    check_step(m, retain, "retain", twin, lambda: F.cross_entropy(twin(x), y), 0.05, momentum=0.9, weight_decay=5e-4)

    cosine = lrs_of(torch.optim.lr_scheduler.CosineAnnealingLR, 4, T_max=4)
    assert [m.learning_rate_factor("main", 0, e) for e in range(4)] == pytest.approx(cosine, abs=1e-12)


def test_convolution_methods_say_the_mlp_has_no_convolution(registry, setting):
    _, ctx, _ = setting
    for name in ("ct", "msg", "cfw"):
        assert "no 2-D convolution" in registry.method(name).unsupported(ctx.task, lambda: tiny_mlp())
        assert registry.method(name).unsupported(ctx.task, lambda: tiny_cnn()) is None


# --- MSG --------------------------------------------------------------------------------------------------------------

class Masker(torch.autograd.Function):
    """Deep Unlearn's ``Masker``: the identity forward, the gradient times the mask backward."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.save_for_backward(mask)
        return x

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def masked_forward(model, masks, x):
    """The model with each convolution computed through ``Masker`` (their ``MaskConv2d``)."""
    for layer in model:
        x = layer._conv_forward(x, Masker.apply(layer.weight, masks[layer]), layer.bias) if layer in masks else layer(x)
    return x


@pytest.mark.parametrize("init_rate", [0.3, 1.0])
def test_msg_reinitialises_the_smallest_gradients_and_masks_the_rest(registry, conv_setting, init_rate):
    """``get_grads_for_snip`` (CE summed over batches of a D_r subset as large as D_f, plus −CE over D_f),
    ``re_init_model_snip_ver2_little_grad`` (per Conv2d, the round(px·n) weights of smallest |grad| re-drawn
    Kaiming-normal, fan-out) and the masked step (gradient × 1 there, × 0.1 elsewhere; weight decay unmasked)."""
    card, ctx, batch = conv_setting
    twin = copy.deepcopy(ctx.model)
    m = method(registry, card, ctx, "msg", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, init_rate=init_rate,
               batch_size=64)
    ctx.data.rng = np.random.default_rng(5)
    draws = saved(ctx.generator)
    m.setup()

    subset = np.sort(np.random.default_rng(5).choice(ctx.data.retain, size=len(ctx.data.forget), replace=False))
    twin.eval()
    twin.zero_grad()
    for start in range(0, len(subset), 64):  # the subset's batches in order (theirs are shuffled: the same sum)
        items = ctx.data.train.__getitems__(subset[start:start + 64].tolist())
        F.cross_entropy(twin(items["pixel_values"]), items["labels"]).backward()
    for b in ctx.data.loader("forget", 64, shuffle=False):
        (-F.cross_entropy(twin(b.inputs["pixel_values"]), b.inputs["labels"])).backward()
    masks = {}
    with torch.no_grad():
        for layer in twin:
            if isinstance(layer, nn.Conv2d):
                n = round(init_rate * layer.weight.numel())
                order = torch.argsort(layer.weight.grad.abs().flatten(), stable=True)
                chosen = torch.zeros(layer.weight.numel(), dtype=torch.bool)
                chosen[order[:n]] = True
                chosen = chosen.view_as(layer.weight)
                fresh = torch.empty(layer.weight.shape)
                nn.init.kaiming_normal_(fresh, mode="fan_out", nonlinearity="relu", generator=draws)
                layer.weight[chosen] = fresh[chosen]
                mask = chosen.float()
                mask[mask == 0] += 0.1
                masks[layer] = mask
    twin.zero_grad()
    params_close(ctx.model, twin)

    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.train()
    ctx.model.train()  # the loop trains in train mode; the gradient pass left it in eval mode
    reference = grads_of(F.cross_entropy(masked_forward(twin, masks, x), y), twin)
    one_step(m, retain, "retain")
    reference_step(twin, reference, "sgd", 0.05, momentum=0.9, weight_decay=5e-4)
    params_close(ctx.model, twin)


def test_msg_breaks_ties_of_equal_gradients_by_position(registry, conv_setting):
    """Where gradients tie (every one zero), the first round(px·n) weights of each kernel are the ones re-drawn."""
    card, ctx, _ = conv_setting
    before = [p.detach().clone() for p in ctx.model.parameters()]
    m = method(registry, card, ctx, "msg", init_rate=0.25)
    m.accumulated_gradients = lambda *args, **kwargs: [None] * len(before)
    m.setup()
    weight, start = ctx.model[0].weight, before[0]
    changed = (weight != start).flatten()
    n = round(0.25 * weight.numel())
    assert changed[:n].all() and not changed[n:].any()


def authors_linear_annealing(epochs):
    """``LinearAnnealingLR(num_annealing_steps=(E + 1) // 2, num_total_steps=E + 1)``, their ``_LRScheduler``."""
    class LinearAnnealingLR(torch.optim.lr_scheduler.LRScheduler):
        def __init__(self, optimizer, num_annealing_steps, num_total_steps):
            self.num_annealing_steps, self.num_total_steps = num_annealing_steps, num_total_steps
            super().__init__(optimizer)

        def get_lr(self):
            if self._step_count <= self.num_annealing_steps:
                return [b * self._step_count / self.num_annealing_steps for b in self.base_lrs]
            return [b * (self.num_total_steps - self._step_count) / (self.num_total_steps - self.num_annealing_steps)
                    for b in self.base_lrs]

    return lrs_of(LinearAnnealingLR, epochs, num_annealing_steps=(epochs + 1) // 2, num_total_steps=epochs + 1)


@pytest.mark.parametrize("epochs", [1, 4, 5])
def test_msg_schedule_is_their_linear_annealing(registry, conv_setting, epochs):
    card, ctx, _ = conv_setting
    m = method(registry, card, ctx, "msg", epochs=epochs)
    assert [m.learning_rate_factor("main", 0, e) for e in range(epochs)] == pytest.approx(authors_linear_annealing(epochs))


# --- CF-k and EU-k ----------------------------------------------------------------------------------------------------

def authors_l2_penalty(model, model_init, weight_decay):
    """SCRUB's ``l2_penalty``: (wd/2) · Σ ‖p − p_init‖² over the parameters that train."""
    loss = 0
    for p, p_init in zip(model.parameters(), model_init.parameters()):
        if p.requires_grad:
            loss += (p - p_init).pow(2).sum()
    return loss * weight_decay / 2.0


def authors_init_weights(module, generator):
    """Deep Unlearn's ``init_weights`` (Kaiming-uniform fan-out convolutions, BatchNorm 1/0, Xavier-uniform linear
    layers, zero biases), its draws from ``generator``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fresh = torch.empty(m.weight.shape)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(fresh, mode="fan_out", nonlinearity="relu", generator=generator)
            else:
                nn.init.xavier_uniform_(fresh, generator=generator)
            m.weight.data = fresh
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


@pytest.mark.parametrize("name, k", [("cfk", 1), ("cfk", 2), ("euk", 2)])
def test_cfk_and_euk_train_the_last_blocks_with_the_proximal_term(registry, conv_setting, name, k):
    """``freeze_model``; ``select_last_k_blocks`` + the classifier unfrozen (EU-k: ``init_weights`` first);
    ``fk_finetune``: CE + ``l2_penalty`` to the weights fine-tuning starts from, eval mode, SGD without momentum."""
    card, ctx, batch = conv_setting
    twin = copy.deepcopy(ctx.model)
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, name, optimizer="sgd", lr=0.05, momentum=0.0, weight_decay=0.0, blocks=k, proximal=0.1)
    m.setup()

    blocks = [twin[0], twin[1], twin[3], twin[6]]  # the tiny CNN's children that hold weights, the head excepted
    trained = blocks[-k:] + [twin[8]]
    if name == "euk":
        for module in trained:
            authors_init_weights(module, draws)
    twin.requires_grad_(False)
    for module in trained:
        module.requires_grad_(True)
    start = copy.deepcopy(twin)
    params_close(ctx.model, twin)
    assert [p.requires_grad for p in ctx.model.parameters()] == [p.requires_grad for p in twin.parameters()]

    with torch.no_grad():  # move off the start, or the proximal term and its gradient are zero
        for p, q in zip(ctx.model.parameters(), twin.parameters()):
            if p.requires_grad:
                noise = 0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                p.add_(noise)
                q.add_(noise)
    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.eval()
    ctx.model.eval()

    def theirs():
        return F.cross_entropy(twin(x), y) + authors_l2_penalty(twin, start, 0.1)

    assert abs(m.loss(retain, "retain").item() - theirs().item()) < TOL
    trainable = [p for p in twin.parameters() if p.requires_grad]
    reference = torch.autograd.grad(theirs(), trainable)
    ours = torch.autograd.grad(m.loss(retain, "retain"), [p for p in ctx.model.parameters() if p.requires_grad])
    assert_close(ours, reference)
    one_step(m, retain, "retain")
    with torch.no_grad():
        for p, g in zip(trainable, reference):
            p -= 0.05 * g
    params_close(ctx.model, twin)


def test_cfk_decays_its_rate_after_the_authors_milestones(registry, conv_setting):
    """``sgda_adjust_learning_rate``: lr · rate^(number of milestones ⌊0.5E⌋, ⌊0.8E⌋, ⌊0.9E⌋ the epoch is past)."""
    card, ctx, _ = conv_setting
    m = method(registry, card, ctx, "cfk", epochs=10, lr_decay=0.1)
    milestones = np.asarray([5, 8, 9])
    expected = [0.1 ** np.sum(e > milestones) for e in range(10)]
    assert [m.learning_rate_factor("main", 0, e) for e in range(10)] == pytest.approx(expected)
    assert registry.method("cfk").train_mode is False  # fk_finetune's run_train_epoch: model.eval()


# --- Fisher forgetting ------------------------------------------------------------------------------------------------

def test_fisher_adds_the_authors_noise(registry, setting):
    """``fisher_new``: ``hessian`` over D_r (per class y, mean(prob[:, y]) · grad² of the batch's CE against y,
    averaged over batches), ``get_mean_var`` (1/(F + 1e-8) clamped at 1e3, 1e2 for class-sized parameters, × α,
    row means of matrices, × 10 for class-sized parameters and vectors), θ₀ + √var · N(0, 1)."""
    card, ctx, _ = setting
    twin = copy.deepcopy(ctx.model)
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, "fisher", alpha=0.2, batch_size=64)
    report = m.unlearn()
    assert report.steps == 0

    twin.eval()
    grad2 = [torch.zeros_like(p) for p in twin.parameters()]
    loader = ctx.data.loader("retain", 64, shuffle=False)
    for b in loader:
        output = twin(b.inputs["pixel_values"])
        prob = F.softmax(output, dim=-1).data
        for y in range(output.shape[1]):
            loss = F.cross_entropy(output, torch.empty_like(b.inputs["labels"]).fill_(y))
            twin.zero_grad()
            loss.backward(retain_graph=True)
            for acc, p in zip(grad2, twin.parameters()):
                acc += torch.mean(prob[:, y]) * p.grad.data.pow(2)
    with torch.no_grad():
        for p, acc in zip(twin.parameters(), grad2):
            var = (1.0 / (acc / len(loader) + 1e-8)).clamp(max=1e3)
            if p.shape[0] == 10:
                var = var.clamp(max=1e2)
            var = 0.2 * var
            if p.ndim > 1:
                var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
            if p.shape[0] == 10 or p.ndim == 1:
                var *= 10
            p.data = p.data + var.sqrt() * torch.randn(p.shape, generator=draws)
    params_close(ctx.model, twin)


# --- Influence unlearning ---------------------------------------------------------------------------------------------

def test_iu_takes_the_authors_woodfisher_step(registry, setting):
    """``Wfisher``: v = Σ_f g / (n_f + n_r) − Σ_r g · n_f / ((n_f + n_r) · n_r) from per-batch mean-loss gradients
    times batch sizes; ``woodfisher`` over single D_r examples (damping N, stopping after example N + 1);
    θ ← θ + α · k."""
    card, ctx, _ = setting
    twin = copy.deepcopy(ctx.model)
    m = method(registry, card, ctx, "iu", alpha=0.5, batch_size=64, samples=20)
    m.unlearn()

    def sam_grad(loss):
        return torch.cat([g.view(-1) for g in torch.autograd.grad(loss, list(twin.parameters()), allow_unused=True)])

    twin.eval()
    summed = {}
    for part in ("forget", "retain"):
        summed[part] = sum(sam_grad(F.cross_entropy(twin(b.inputs["pixel_values"]), b.inputs["labels"])) * len(b)
                           for b in ctx.data.loader(part, 64, shuffle=False))
    total, total_2 = len(ctx.data.forget), len(ctx.data.retain)
    v = summed["forget"] / (total + total_2) - summed["retain"] * (total / ((total + total_2) * total_2))
    k_vec, o_vec, n, seen = v.clone(), None, 20, 0
    for idx, b in enumerate(ctx.data.loader("retain", 1, shuffle=False)):
        g = sam_grad(F.cross_entropy(twin(b.inputs["pixel_values"]), b.inputs["labels"]))
        seen += 1
        if o_vec is None:
            o_vec = g.clone()
        else:
            tmp = torch.dot(o_vec, g)
            k_vec -= (torch.dot(k_vec, g) / (n + tmp)) * o_vec
            o_vec -= (tmp / (n + tmp)) * o_vec
        if idx > n:
            break
    assert seen == n + 2
    with torch.no_grad():
        start = 0
        for p in twin.parameters():
            p.view(-1).add_(0.5 * k_vec[start:start + p.numel()])
            start += p.numel()
    params_close(ctx.model, twin)


# --- FCS --------------------------------------------------------------------------------------------------------------

def test_fcs_losses_steps_and_schedules_are_the_authors(registry, setting):
    """``KGLTop1``: ``kl_loss_sym`` to the uniform label on D_f, the contrastive loss
    −mean log_softmax(z_f · z_rᵀ / T) with D_r's logits detached, CE on D_r; three SGD optimisers (the retain rate
    × batch size / 64) and ``CosineAnnealingLR(T_max = |forget batches| · E, eta_min)`` on the contrast's steps."""
    card, ctx, batch = setting
    m = method(registry, card, ctx, "fcs", batch_size=256, temperature=1.15, epochs=8, optimizer="sgd", lr=0.005, momentum=0.9,
               weight_decay=0.0)
    m.setup()
    forget, retain = rows(batch, True), rows(batch, False)
    from mubench.api.method import Pair

    pair = Pair(forget, retain)
    xf, xr, yr = forget.inputs["pixel_values"], retain.inputs["pixel_values"], retain.inputs["labels"]
    twin = copy.deepcopy(ctx.model)
    references = {
        "uniform": lambda: nn.KLDivLoss(reduction="batchmean")(nn.LogSoftmax(dim=-1)(twin(xf)),
                                                             torch.ones(len(xf), 10) / 10),
        "contrast": lambda: (-1 * nn.LogSoftmax(dim=-1)(twin(xf) @ twin(xr).detach().T / 1.15)).mean(),
        "retain": lambda: nn.CrossEntropyLoss()(twin(xr), yr),
    }
    settings = {"uniform": (0.005, 0.9, 0.0), "contrast": (3e-4, 0.9, 0.0), "retain": (1e-3 * 256 / 64, 0.9, 1e-2)}
    for phase, reference in references.items():
        inputs = pair if phase == "contrast" else forget if phase == "uniform" else retain
        assert m.optimizer_group(phase, 0) == phase
        assert abs(m.loss(inputs, phase).item() - reference().item()) < TOL
        assert_close(grads_of(m.loss(inputs, phase), ctx.model), grads_of(reference(), twin))
        reference_grads = grads_of(reference(), twin)
        settings_of = m.optimizer_settings(phase)
        assert (settings_of["lr"], settings_of["momentum"], settings_of["weight_decay"]) == pytest.approx(settings[phase])
        from mubench.loop import objective_optimizer

        optimizer, _ = objective_optimizer(m, list(ctx.model.parameters()), phase)
        ctx.model.zero_grad()
        m.loss(inputs, phase).backward()
        optimizer.step()
        lr, momentum, weight_decay = settings[phase]
        reference_step(twin, reference_grads, "sgd", lr, momentum=momentum, weight_decay=weight_decay)
        params_close(ctx.model, twin)
    assert [p.phase for p in m.passes(0)] == ["uniform", "contrast", "retain"]
    assert [p.phase for p in m.passes(1)] == ["contrast", "retain"]

    total = len(ctx.data.loader("forget", 256)) * 8
    cosine = lrs_of(torch.optim.lr_scheduler.CosineAnnealingLR, total, T_max=total, eta_min=1e-6 / 3e-4)
    assert [m.learning_rate_factor("contrast", s, 0) for s in range(total)] == pytest.approx(cosine, rel=1e-9)
    assert m.learning_rate_factor("retain", 5, 3) == 1.0


# --- CFW --------------------------------------------------------------------------------------------------------------

def test_cfw_confuses_the_stem_and_weighs_the_classes(registry, conv_setting):
    """``KGLTop3``: the stem's weights ← N(w, 0.6²); scikit-learn's balanced class weights over D_r's labels;
    ``CustomCrossEntropyLoss``: mean CE × mean of the batch's class weights; SGD; the stem confused again (0.005)
    before the last epoch; ``CosineAnnealingLR(T_max=epochs)``."""
    from sklearn.utils.class_weight import compute_class_weight

    card, ctx, batch = conv_setting
    twin = copy.deepcopy(ctx.model)
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, "cfw", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, epochs=4)
    m.setup()
    with torch.no_grad():
        twin[0].weight.copy_(torch.normal(mean=twin[0].weight, std=0.6, generator=draws))
    params_close(ctx.model, twin)

    labels = ctx.data.train.tensors["labels"][ctx.data.retain].numpy()
    weights = compute_class_weight(class_weight="balanced", classes=np.unique(labels), y=labels)
    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.train()

    def theirs():
        return torch.mean(F.cross_entropy(twin(x), y) * torch.tensor([weights[i] for i in y], dtype=torch.float32))

    check_step(m, retain, "retain", twin, theirs, 0.05, momentum=0.9, weight_decay=5e-4)

    for epoch in range(3):  # no noise until the last epoch
        m.passes(epoch)
    params_close(ctx.model, twin)
    m.passes(3)
    with torch.no_grad():
        twin[0].weight.copy_(torch.normal(mean=twin[0].weight, std=0.005, generator=draws))
    params_close(ctx.model, twin)
    cosine = lrs_of(torch.optim.lr_scheduler.CosineAnnealingLR, 4, T_max=4)
    assert [m.learning_rate_factor("main", 0, e) for e in range(4)] == pytest.approx(cosine, abs=1e-12)


# --- PRMQ -------------------------------------------------------------------------------------------------------------

def test_prmq_prunes_reinitialises_matches_entropy_and_quantises(registry, conv_setting):
    """``KGLTop4``: ``prune.global_unstructured`` (L1, 0.99) over every Conv2d/Linear weight and bias, the zeros of
    each weight re-drawn uniformly in ±√(1/fan_in); ``entropy_loss_fn`` (CE with weights counts^−0.1, plus the MSE of
    the prediction's and θ₀'s entropies); ⌊batches · 3.2⌋ + 1 steps; fp16 round trip at the end."""
    import torch.nn.utils.prune as prune

    card, ctx, batch = conv_setting
    twin = copy.deepcopy(ctx.model)
    teacher = copy.deepcopy(ctx.model).eval()
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, "prmq", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=64,
               epochs=3.2)
    m.setup()

    layers = [module for module in twin.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    targets = [(module, name) for module in layers for name in ("weight", "bias")]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=0.99)
    for module in layers:
        prune.remove(module, "weight")
        prune.remove(module, "bias")
    for module in layers:
        mask = module.weight == 0
        k = 1 / (mask.shape[1] * (mask.shape[2] * mask.shape[3] if isinstance(module, nn.Conv2d) else 1))
        randinit = (torch.rand(module.weight.shape, generator=draws) - 0.5) * 2 * math.sqrt(k)
        module.weight.data[mask] = randinit[mask]
    params_close(ctx.model, twin)
    assert sum(int((module.bias == 0).sum()) for module in layers) > 0  # pruned biases stay zero

    labels = ctx.data.train.tensors["labels"][ctx.data.retain]
    _, counts = torch.unique(labels, return_counts=True)
    class_weights = counts.float() ** -0.1
    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.train()

    def theirs():
        outputs = twin(x)
        with torch.no_grad():
            preds = torch.log_softmax(teacher(x), dim=1)
        ce = F.cross_entropy(outputs, y, weight=class_weights)
        target_entropy = torch.sum(-torch.exp(preds) * preds, dim=1)
        output_entropy = torch.sum(-torch.softmax(outputs, dim=1) * torch.log_softmax(outputs, dim=1), dim=1)
        return ce + F.mse_loss(output_entropy, target_entropy)

    check_step(m, retain, "retain", twin, theirs, 0.05, momentum=0.9, weight_decay=5e-4)

    per_epoch = len(ctx.data.loader("retain", 64))
    steps = int(per_epoch * 3.2) + 1
    assert m.total_epochs() == math.ceil(steps / per_epoch)
    assert sum(len(p.loader) for e in range(m.total_epochs()) for p in m.passes(e)) == steps
    m.finish()
    twin = twin.to(torch.half).to(torch.float)
    for ours, theirs_ in zip(ctx.model.parameters(), twin.parameters()):
        assert torch.equal(ours, theirs_)
    assert all(torch.equal(b, b.half().float()) for b in ctx.model.buffers() if b.is_floating_point())  # BatchNorm's too


# --- KDE --------------------------------------------------------------------------------------------------------------

def test_reset_like_torch_draws_what_reset_parameters_draws():
    from mubench.api.anatomy import reset_like_torch

    for layer in (nn.Linear(7, 3), nn.Conv2d(2, 5, 3)):
        twin = copy.deepcopy(layer)
        torch.manual_seed(11)
        layer.reset_parameters()
        torch.manual_seed(11)
        reset_like_torch(twin, torch.default_generator)
        assert torch.equal(layer.weight, twin.weight) and torch.equal(layer.bias, twin.bias)


def test_kde_resets_then_distils_with_the_authors_losses(registry, conv_setting):
    """``KGLTop6``: the stem and head reset; warm-up ``kl_loss`` at T (batch mean); then ``soft_cross_entropy`` at T +
    CE + ``kl_loss``, its own SGD optimiser and ``CosineAnnealingLR(T_max=retain epochs)``."""
    from mubench.api.anatomy import reset_like_torch

    card, ctx, batch = conv_setting
    teacher = copy.deepcopy(ctx.model).eval()
    twin = copy.deepcopy(ctx.model)
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, "kde", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, retain_lr=0.02,
               retain_momentum=0.5, retain_weight_decay=1e-3, temperature=5.0, warmup_epochs=3, epochs=3)
    m.setup()
    reset_like_torch(twin[0], draws)
    reset_like_torch(twin[8], draws)
    params_close(ctx.model, twin)
    assert m.total_epochs() == 6 and [m.passes(e)[0].phase for e in range(6)] == ["warmup"] * 3 + ["retain"] * 3

    retain = rows(batch, forget=False)
    x, y = retain.inputs["pixel_values"], retain.inputs["labels"]
    twin.train()

    def kl(out, t, temperature=5.0):
        return F.kl_div(F.log_softmax(out / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean")

    def warmup():
        with torch.no_grad():
            t = teacher(x)
        return kl(twin(x), t)

    def strengthen():
        out = twin(x)
        with torch.no_grad():
            t = teacher(x)
        soft_predictions = torch.log_softmax(out / 5.0, dim=1)
        loss = torch.mean(torch.sum(-torch.softmax(t / 5.0, dim=1) * torch.log_softmax(soft_predictions, dim=1), dim=1))
        return loss + F.cross_entropy(out, y) + kl(out, t)

    from mubench.loop import objective_optimizer

    for phase, reference, (lr, momentum, wd) in (("warmup", warmup, (0.05, 0.9, 5e-4)), ("retain", strengthen, (0.02, 0.5, 1e-3))):
        assert abs(m.loss(retain, phase).item() - reference().item()) < TOL
        reference_grads = grads_of(reference(), twin)
        assert_close(grads_of(m.loss(retain, phase), ctx.model), reference_grads)
        optimizer, _ = objective_optimizer(m, list(ctx.model.parameters()), m.optimizer_group(phase, 0))
        ctx.model.zero_grad()
        m.loss(retain, phase).backward()
        optimizer.step()
        reference_step(twin, reference_grads, "sgd", lr, momentum=momentum, weight_decay=wd)
        params_close(ctx.model, twin)
    cosine = lrs_of(torch.optim.lr_scheduler.CosineAnnealingLR, 3, T_max=3)
    assert [m.learning_rate_factor("retain", 0, e) for e in (3, 4, 5)] == pytest.approx(cosine, abs=1e-12)
    assert m.learning_rate_factor("warmup", 0, 1) == 1.0


# --- RNI --------------------------------------------------------------------------------------------------------------

def test_rni_trains_random_layers_with_noise_then_everything(registry, conv_setting):
    """``KGLTop7``: the head reset; in each of the first E − fine epochs ``layers`` random non-normalisation tensors
    (plus every normalisation one) train under a fresh SGD optimiser; from ``reset_epochs`` on, ⌊ratio · layers⌋ of the
    chosen get noise unless an earlier epoch chose them; the fine epochs train all at ``fine_lrs``."""
    from mubench.api.anatomy import reset_like_torch

    card, ctx, _ = conv_setting
    twin = copy.deepcopy(ctx.model)
    draws = saved(ctx.generator)
    m = method(registry, card, ctx, "rni", epochs=5, fine_epochs=2, fine_lrs=[0.1, 0.2], layers=3, noise_ratio=0.7,
               noise=0.04, reset_epochs=1, lr=0.01)
    m.setup()
    reset_like_torch(twin[8], draws)

    named = dict(twin.named_parameters())
    norm = ["1.weight", "1.bias"]  # the BatchNorm's: "bn" in their names, by type here
    others = [k for k in named if k not in norm]
    already = set()
    for epoch in range(5):
        m.passes(epoch)
        if epoch >= 3:
            keys = list(named)
        else:
            picked = [others[i] for i in torch.randperm(len(others), generator=draws)[:3].tolist()]
            keys = sorted(set(picked + norm))
            if epoch >= 1:
                candidates = [k for k in keys if k not in norm]
                for key in sorted(candidates[i] for i in torch.randperm(len(candidates), generator=draws)[:int(0.7 * 3)].tolist()):
                    if key not in already:
                        named[key].data = named[key].data + torch.randn(named[key].shape, generator=draws) * 0.04
        already |= set(keys)
        params_close(ctx.model, twin)
        assert [k for k, p in ctx.model.named_parameters() if p.requires_grad] == [k for k in named if k in keys]
        assert m.optimizer_group("retain", epoch) != m.optimizer_group("retain", epoch - 1)  # a fresh optimiser each epoch
        settings = m.optimizer_settings(m.optimizer_group("retain", epoch))
        assert settings["lr"] == ([0.01] * 3 + [0.1, 0.2])[epoch]
