import functools

import torch

from mubench.api import TRAINING_SPACE, Range, Taxonomy
from mubench.api.anatomy import conv2d_layers, drawn, without_convolutions
from mubench.methods.references import FineTune


class MaskedSmallGradients(FineTune):
    """MSG, masked small gradients (the 2nd solution of the NeurIPS 2023 unlearning challenge; Deep Unlearn's ``KGLTop2``).

    One pass accumulates, from zero, the gradient of the task loss over a random subset
    of D_r as large as D_f plus that of −(task loss) over D_f (each batch's mean loss,
    summed over batches, as ``get_grads_for_snip``). In every 2-D convolution the
    ⌊``init_rate`` · n⌉ weights of smallest |gradient| (ties by position) are
    re-initialised (Kaiming-normal, fan-out, ReLU); fine-tuning on D_r then scales their
    gradients by 1 and every other convolution weight's by ``small_scale`` (weight decay
    unscaled, as their masked convolution). The learning rate rises linearly to its peak
    at epoch ⌊(E + 1)/2⌋ and falls back (``LinearAnnealingLR``, stepped per epoch).
    Defaults are Deep Unlearn's: init rate 0.3, scale 0.1, SGD, lr 1e-3, momentum 0.9,
    weight decay 5e-4, 5 epochs, batch 64 (also the gradient pass's).
    """

    name = "msg"
    summary = "re-initialise the convolution weights of smallest D_f/D_r gradient, fine-tune with masked gradients"
    taxonomy = Taxonomy("loss", "weights", "loss", "dense, internal")
    defaults = FineTune.defaults | dict(epochs=5, batch_size=64, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4,
                                        init_rate=0.3, small_scale=0.1)
    search_space = TRAINING_SPACE | {"init_rate": Range(0.0, 1.0)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return without_convolutions(skeleton)

    @classmethod
    def check_args(cls, args):
        if not 0 <= args["init_rate"] <= 1:
            return f"init_rate (the share of each convolution re-initialised) lies in [0, 1], got {args['init_rate']}"
        return super().check_args(args)

    def setup(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        retain = self.accumulated_gradients("retain", self.task_loss, retain_size=len(self.ctx.data.forget))
        forget = self.accumulated_gradients("forget", lambda batch: -self.task_loss(batch))
        gradient = {id(p): sum(g for g in (r, f) if g is not None) for p, r, f in zip(params, retain, forget)}
        self.scales = []
        with torch.no_grad():
            for _, conv in conv2d_layers(self.model, trainable=True):
                weight = conv.weight
                g = gradient.get(id(weight), 0)
                smallest = torch.argsort((g if torch.is_tensor(g) else torch.zeros_like(weight)).abs().flatten(), stable=True)
                chosen = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
                chosen[smallest[:round(self.hp.init_rate * weight.numel())]] = True
                chosen = chosen.view_as(weight)
                fresh = drawn(weight, functools.partial(torch.nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu"),
                              self.ctx.generator)
                weight[chosen] = fresh[chosen]
                self.scales.append((weight, torch.where(chosen, 1.0, self.hp.small_scale).to(weight.dtype)))

    def after_backward(self):
        for weight, scale in self.scales:
            if weight.grad is not None:
                weight.grad.mul_(scale)

    def learning_rate_factor(self, group, step, epoch):
        epochs = self.hp.epochs
        peak = (epochs + 1) // 2
        count = epoch + 1  # the scheduler's _step_count during this epoch
        return count / peak if count <= peak else (epochs + 1 - count) / (epochs + 1 - peak)
