"""What the fidelity tests share: a tiny model, one optimiser step as the core takes it and as torch takes it, and
comparisons to 1e-5."""
import torch
from torch import nn

from mubench.loop import objective_optimizer

TOL = 1e-5
K = 10


def tiny_mlp(seed: int = 0) -> nn.Module:
    """64 → 16 → 10 with six hidden units that never fire (bias −100): their gradients are exactly zero."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, K))
    with torch.no_grad():
        model[1].bias[:6] = -100.0
    return model


def tiny_cnn(seed: int = 0) -> nn.Module:
    """1 → 4 channels (BatchNorm) → 6 channels, 3×3 kernels, on 8×8 digits, then 216 → 16 → 10."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(216, 16), nn.ReLU(), nn.Linear(16, K))


def method(registry, card, ctx, name, **overrides):
    cls = registry.method(name)
    return cls(ctx, cls.resolve_args(card, overrides))


def grads_of(loss, model):
    """Each parameter's gradient of ``loss`` (None where none flows)."""
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]


def assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        assert (a is None) == (b is None), "a gradient flows on one side only"
        if a is not None:
            assert torch.allclose(a, b, atol=TOL, rtol=TOL), (a - b).abs().max()


def one_step(m, batch, phase):
    """The core's step: backward, the method's gradient surgery, its optimiser (as the loop builds it)."""
    optimizer, _ = objective_optimizer(m, [p for p in m.model.parameters() if p.requires_grad])
    m.model.zero_grad(set_to_none=True)
    m.loss(batch, phase).backward()
    m.after_backward()
    optimizer.step()


def reference_step(model, grads, optimizer: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
    """One step of torch's optimiser (as the authors' code calls it) with given gradients."""
    params = list(model.parameters())
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.clone()  # a parameter without a gradient is skipped, as torch skips it
    if optimizer == "sgd":
        torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay).step()
    else:
        {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer](params, lr=lr, weight_decay=weight_decay).step()


def rows(batch, forget: bool):
    """The D_f (or D_r) rows of a fixed batch, as a batch of their own."""
    from mubench.data import Batch

    keep = batch.forget if forget else ~batch.forget
    return Batch({k: v[keep] for k, v in batch.inputs.items()}, batch.forget[keep])


def saved(generator: torch.Generator) -> torch.Generator:
    """A generator in ``generator``'s current state, to redraw what a method is about to draw."""
    twin = torch.Generator()
    twin.set_state(generator.get_state())
    return twin


def params_close(model, twin):
    assert_close(list(model.parameters()), list(twin.parameters()))


def check_step(m, batch, phase, twin, theirs, lr, momentum=0.0, weight_decay=0.0):
    """``m``'s loss and gradients on ``batch`` equal ``theirs()`` on ``twin``, and so do the weights after one SGD step."""
    assert abs(m.loss(batch, phase).item() - theirs().item()) < TOL
    reference = grads_of(theirs(), twin)
    assert_close(grads_of(m.loss(batch, phase), m.model), reference)
    one_step(m, batch, phase)
    reference_step(twin, reference, "sgd", lr, momentum=momentum, weight_decay=weight_decay)
    params_close(m.model, twin)
