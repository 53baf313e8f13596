import math

import torch
import torch.nn.functional as F
from torch import nn

from mubench.api import TRAINING_SPACE, Pass, Range, Taxonomy, output_problem
from mubench.api.method import FirstBatches
from mubench.methods.references import FineTune


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """The entropy of each row of log-probabilities."""
    return -(log_probs.exp() * log_probs).sum(-1)


class PruneReinitQuantise(FineTune):
    """PRMQ, prune, re-initialise, match entropy and quantise (the 4th solution of the NeurIPS 2023 unlearning challenge;
    Deep Unlearn's ``KGLTop4``).

    Global ℓ1 pruning zeroes the ``prune_amount`` share of smallest |values| over every
    weight and bias of the convolution and linear layers (torch's ``global_unstructured``;
    ties by position); the zeros of each weight (not bias) are re-drawn uniformly in
    ±√(1/fan_in). The model then trains on D_r with the class-weighted cross-entropy
    (weights n_c^−0.1 over D_r's class counts) plus the squared difference between the
    entropy of its prediction and θ₀'s, for ⌊``epochs`` · batches⌋ + 1 steps (their loop's
    count, ``epochs`` fractional), and its weights are rounded through fp16 at the end.
    Defaults are theirs: prune 0.99, SGD, lr 5e-4, momentum 0.9, weight decay 5e-4,
    3.2 epochs, batch 64.
    """

    name = "prmq"
    summary = "prune 99% of the weights, re-initialise them, train on D_r matching θ₀'s entropy, round to fp16"
    taxonomy = Taxonomy("none", "weights", "loss+logits", "dense, internal")
    defaults = FineTune.defaults | dict(epochs=3.2, batch_size=64, optimizer="sgd", lr=5e-4, momentum=0.9, weight_decay=5e-4,
                                        prune_amount=0.99)
    search_space = TRAINING_SPACE | {"epochs": Range(1.0, 10.0), "prune_amount": Range(0.5, 0.999)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits")

    @classmethod
    def check_args(cls, args):
        if not 0 <= args["prune_amount"] < 1:
            return f"prune_amount lies in [0, 1), got {args['prune_amount']}"
        return super().check_args(args)

    def prune_and_reinitialise(self) -> None:
        layers = [m for m in self.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        tensors = [t for m in layers for t in (m.weight, m.bias) if t is not None]
        with torch.no_grad():
            scores = torch.cat([t.detach().abs().flatten() for t in tensors])
            pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            pruned[torch.argsort(scores, stable=True)[:round(self.hp.prune_amount * scores.numel())]] = True
            start = 0
            for t in tensors:
                t[pruned[start:start + t.numel()].view_as(t)] = 0
                start += t.numel()
            for m in layers:
                bound = math.sqrt(1 / m.weight[0].numel())
                fresh = ((torch.rand(m.weight.shape, generator=self.ctx.generator) - 0.5) * 2 * bound).to(m.weight.device, m.weight.dtype)
                zero = m.weight == 0
                m.weight[zero] = fresh[zero]

    def setup(self):
        self.teacher = self.ctx.frozen_copy()
        counts = self.class_counts("retain").float()
        self.class_weights = torch.where(counts > 0, counts.clamp(min=1) ** -0.1, 0.0).to(self.ctx.device)
        self.steps = int(len(self.loader("retain")) * self.hp.epochs) + 1
        self.prune_and_reinitialise()

    def total_epochs(self):
        return math.ceil(self.steps / len(self.loader("retain")))

    def passes(self, epoch):
        loader = self.loader("retain")
        return [Pass("retain", FirstBatches(loader, self.steps - epoch * len(loader)))]

    def loss(self, batch, phase):
        logits = self.logits(batch)
        target = F.log_softmax(self.teacher_logits(self.teacher, batch).float(), dim=-1)
        ce = F.cross_entropy(logits.float(), batch.inputs["labels"], weight=self.class_weights)
        return ce + F.mse_loss(entropy(F.log_softmax(logits.float(), dim=-1)), entropy(target))

    def finish(self):
        with torch.no_grad():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                if tensor.is_floating_point():
                    tensor.copy_(tensor.half().to(tensor.dtype))
