"""The training loop's accumulation, clipping and warm-up, and the method primitives built on it."""
import time

import pytest
import torch
from torch import nn

from mubench.api import Method, Pass
from mubench.errors import UserError
from mubench.loop import learning_rate_factor, optimise


class Batches:
    """A fixed list of batches that the loop can move to a device."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class Item:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def to(self, device):
        return self

    def __len__(self):
        return len(self.x)


class Regression(Method):
    """Least squares over given batches: a method whose exact updates are easy to recompute."""

    name = "regression"

    def __init__(self, batches, **hp):
        super().__init__(None, Method.defaults | {"optimizer": "sgd", "lr": 0.1, "momentum": 0.0} | hp)
        self.batches, self.steps_seen = batches, []

    def passes(self, epoch):
        return [Pass("fit", Batches(self.batches))]

    def loss(self, batch, phase):
        self.steps_seen.append(self.step)
        return ((self.net(batch.x) - batch.y) ** 2).mean()


def make(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 1)


def data(n=8):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=generator), torch.randn(n, 1, generator=generator)


def run(batches, **hp):
    model = make()
    method = Regression(batches, **hp)
    method.net = model
    report = optimise(method, model, 1, torch.device("cpu"), "fp32")
    return model, report, method


def test_accumulating_two_halves_equals_one_whole_batch():
    x, y = data()
    whole, report_whole, _ = run([Item(x, y)])
    halves, report_halves, method = run([Item(x[:4], y[:4]), Item(x[4:], y[4:])], grad_accum_steps=2)
    assert report_whole.steps == report_halves.steps == 1
    assert method.steps_seen == [0, 0]  # both micro-batches belong to optimiser step 0
    for a, b in zip(whole.parameters(), halves.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_pass_that_ends_mid_accumulation_still_steps():
    x, y = data(12)
    _, report, _ = run([Item(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)], grad_accum_steps=2)
    assert report.steps == 2


def test_clipping_bounds_the_update():
    x, y = data()
    y = y * 1000  # a huge gradient
    before = make()
    clipped, _, _ = run([Item(x, y)], max_grad_norm=0.5, lr=1.0)
    step = torch.cat([(a - b).flatten() for a, b in zip(clipped.parameters(), before.parameters())])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)
    free, _, _ = run([Item(x, y)], lr=1.0)
    assert torch.cat([(a - b).flatten() for a, b in zip(free.parameters(), before.parameters())]).norm() > 10


def test_warm_up_and_decay_schedule():
    assert [learning_rate_factor(s, 0, 4, [], 0.1) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert learning_rate_factor(10, 3, 0, [2, 3], 0.1) == pytest.approx(0.01)
    assert learning_rate_factor(0, 0, 0, [], 0.1) == 1.0


def test_warm_up_scales_the_first_step():
    x, y = data()
    before = make()
    full, _, _ = run([Item(x, y)])
    warm, _, _ = run([Item(x, y)], warmup_steps=4)
    full_step = torch.cat([(a - b).flatten() for a, b in zip(full.parameters(), before.parameters())])
    warm_step = torch.cat([(a - b).flatten() for a, b in zip(warm.parameters(), before.parameters())])
    assert torch.allclose(warm_step, 0.25 * full_step, atol=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"grad_accum_steps": 0}, "grad_accum_steps must be positive"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must not be negative"),
    ({"warmup_steps": -2}, "warmup_steps must not be negative"),
])
def test_bad_loop_settings(registry, overrides, message):
    with pytest.raises(UserError) as info:
        registry.method("neggrad").resolve_args(registry.card("digits"), overrides)
    assert message in str(info.value)


@pytest.fixture(scope="module")
def digits_ctx(digits_prepared):
    cpu = torch.device("cpu")
    return lambda: digits_prepared.context(digits_prepared.original(cpu, "fp32").model, 0, cpu, "fp32")


def test_paired_batches_cycle_d_r(digits_ctx, registry):
    ctx = digits_ctx()
    method = registry.method("neggrad")(ctx, registry.method("neggrad").resolve_args(registry.card("digits")))
    pairs = list(method.paired(batch_size=16, retain_batch_size=512))
    assert len(pairs) == -(-len(ctx.data.forget) // 16)
    assert all(p.forget.forget.all() and not p.retain.forget.any() for p in pairs)
    seen = torch.cat([p.retain.inputs["labels"] for p in pairs])
    assert len(seen) > len(ctx.data.retain)  # D_r restarted when it ran out


def test_paired_batches_refuse_an_empty_d_r(digits_ctx, registry):
    import numpy as np

    ctx = digits_ctx()
    ctx.data.retain = np.array([], dtype=np.int64)
    method = registry.method("neggrad")(ctx, registry.method("neggrad").resolve_args(registry.card("digits")))
    with pytest.raises(UserError, match="D_r is empty"):
        method.paired()


class Dampen(Method):
    """A method without a training loop: it scales every weight once."""

    name = "dampen"
    trains = False

    def setup(self):
        with torch.no_grad():
            for p in self.model.parameters():
                p.mul_(0.5)


def test_a_method_without_a_training_loop_is_timed_and_budgeted(digits_ctx):
    ctx = digits_ctx()
    before = [p.detach().clone() for p in ctx.model.parameters()]
    report = Dampen(ctx, dict(Method.defaults)).unlearn()
    assert report.steps == 0 and report.seconds > 0 and not report.budget_exhausted
    assert all(torch.equal(p, 0.5 * b) for p, b in zip(ctx.model.parameters(), before))


class TwoOptimisers(Regression):
    """Alternating passes ``a`` and ``b``, each with its own SGD optimiser (momentum, its own rate) and its own schedule."""

    name = "two"

    def passes(self, epoch):
        return [Pass("a", Batches(self.batches)), Pass("b", Batches(self.batches))]

    def optimizer_group(self, phase, epoch):
        return phase

    def optimizer_settings(self, group):
        return super().optimizer_settings(group) | {"lr": 0.1 if group == "a" else 0.03}

    def learning_rate_factor(self, group, step, epoch):
        return 1.0 if group == "a" else 1.0 / (step + 1)


def test_each_optimiser_group_keeps_its_own_state_and_schedule():
    """Two torch SGD optimisers with momentum over the same weights, stepped in turn, as the method's groups say."""
    x, y = data()
    batches = [Item(x[:4], y[:4]), Item(x[4:], y[4:])]
    model = make()
    method = TwoOptimisers(batches, momentum=0.9)
    method.net = model
    report = optimise(method, model, 2, torch.device("cpu"), "fp32")
    assert report.steps == 8

    twin = make()
    a = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    b = torch.optim.SGD(twin.parameters(), lr=0.03, momentum=0.9)
    steps_b = 0
    for _ in range(2):
        for optimizer in (a, b):
            for item in batches:
                if optimizer is b:
                    optimizer.param_groups[0]["lr"] = 0.03 / (steps_b + 1)
                    steps_b += 1
                optimizer.zero_grad()
                ((twin(item.x) - item.y) ** 2).mean().backward()
                optimizer.step()
    for ours, theirs in zip(model.parameters(), twin.parameters()):
        assert torch.allclose(ours, theirs, atol=1e-6)
    one = make()
    shared = TwoOptimisers(batches, momentum=0.9)
    shared.optimizer_group = lambda phase, epoch: "main"  # one optimiser: one momentum buffer, a different path
    shared.net = one
    optimise(shared, one, 2, torch.device("cpu"), "fp32")
    assert not torch.allclose(one.weight, model.weight, atol=1e-4)


class Dropout(Regression):
    name = "dropout"

    def loss(self, batch, phase):
        self.modes.append(self.net.training)
        return super().loss(batch, phase)


@pytest.mark.parametrize("train_mode", [True, False])
def test_the_loop_trains_in_the_mode_the_method_asks_for(train_mode):
    x, y = data()
    model = make()
    method = Dropout([Item(x, y)])
    method.net, method.modes, method.train_mode = model, [], train_mode
    optimise(method, model, 1, torch.device("cpu"), "fp32")
    assert method.modes == [train_mode]


def test_a_method_finishes_inside_its_timed_call(digits_ctx):
    ctx = digits_ctx()
    finished = []

    class Finishing(Dampen):
        def finish(self):
            time.sleep(0.2)
            finished.append(True)

    report = Finishing(ctx, dict(Method.defaults)).unlearn()
    assert finished == [True] and report.seconds >= 0.2


class Terminal:
    """A stand-in for stderr on a terminal: tqdm draws its bars only where ``isatty()`` is true."""

    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_the_loop_shows_a_bar_with_its_total_rate_and_eta_on_a_terminal_only(monkeypatch, tty):
    import io
    import sys

    terminal = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    x, y = data()
    model = make()
    method = Regression([Item(x[:4], y[:4]), Item(x[4:], y[4:])])
    method.net = model
    optimise(method, model, 3, torch.device("cpu"), "fp32", desc="unlearning regression")
    shown = terminal.text if tty else terminal.getvalue()
    if not tty:
        assert shown == ""
        return
    frames = shown.replace("\r", "\n").strip().splitlines()  # tqdm redraws at most every 0.1 s: the frames it drew
    assert any("unlearning regression" in line and "/6 [" in line and "batch/s]" in line and "<" in line for line in frames), frames
