import torch

from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy, output_problem
from mubench.api.anatomy import head, norm_parameters, reset_like_torch


class ResetNoiseImprove(Method):
    """RNI, reset, noise and improve (the 7th solution of the NeurIPS 2023 unlearning challenge; Deep Unlearn's ``KGLTop7``).

    The head is re-initialised (``reset_parameters``); training is on D_r with the task
    loss. In each of the first E − ``fine_epochs`` epochs (none when E ≤ ``fine_epochs``) only ``layers`` randomly chosen
    parameter tensors train (with every normalisation layer's), under a fresh SGD
    optimiser; from epoch ``reset_epochs`` on, ⌊``noise_ratio`` · ``layers``⌋ of those
    chosen (not normalisation ones) that no earlier epoch chose get Gaussian noise of std
    ``noise`` first. The last ``fine_epochs`` epochs train everything, epoch i at
    ``fine_lrs[i]`` with the ``fine_*`` momentum and weight decay. Draws come from the
    run's generator (theirs from numpy's); their ``"bn" in name`` test for normalisation
    layers is a module-type test here. Defaults are theirs: 9 epochs, 4 of them fine,
    9 layers, noise 0.04 on 70%, SGD lr 2e-4, momentum 0.9, weight decay 5e-4, fine
    rates 2e-4, 2e-4, 2e-4, 1e-3, batch 64.
    """

    name = "rni"
    summary = "reset the head, train random layer subsets on D_r with noise, then the whole model"
    taxonomy = Taxonomy("none", "weights", "loss", "sparse, internal")
    defaults = Method.defaults | dict(epochs=9, batch_size=64, optimizer="sgd", lr=2e-4, momentum=0.9, weight_decay=5e-4,
                                      fine_epochs=4, fine_lrs=[2e-4, 2e-4, 2e-4, 1e-3], fine_momentum=0.9,
                                      fine_weight_decay=5e-4, layers=9, reset_epochs=1, noise_ratio=0.7, noise=0.04)
    search_space = TRAINING_SPACE | {"fine_epochs": Range(0, 10), "reset_epochs": Range(0, 10),
                                          "noise_ratio": Range(0.0, 1.0), "noise": Range(0.0, 1.0)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits")

    @classmethod
    def check_args(cls, args):
        if not args["fine_epochs"] >= 0:
            return f"fine_epochs must not be negative, got {args['fine_epochs']}"
        if len(args["fine_lrs"]) < args["fine_epochs"] or not all(isinstance(lr, (int, float)) and lr > 0 for lr in args["fine_lrs"]):
            return f"fine_lrs needs a positive learning rate for each of the {args['fine_epochs']} fine epochs, got {args['fine_lrs']}"
        if not args["layers"] >= 1:
            return f"layers must be at least 1, got {args['layers']}"
        return super().check_args(args)

    def setup(self):
        reset_like_torch(head(self.model), self.ctx.generator)
        self.named = dict(self.model.named_parameters())
        norms = norm_parameters(self.model)
        self.norm_keys = [k for k, p in self.named.items() if id(p) in norms]
        self.other_keys = [k for k, p in self.named.items() if id(p) not in norms]
        self.already: set[str] = set()

    def fine_start(self) -> int:
        """The first of the fine epochs: the last ``fine_epochs`` (all of them when there are fewer epochs)."""
        return max(0, self.hp.epochs - self.hp.fine_epochs)

    def fine(self, epoch: int) -> bool:
        return epoch >= self.fine_start()

    def draw(self, keys: list[str], count: int) -> list[str]:
        """``count`` of ``keys`` drawn without replacement."""
        order = torch.randperm(len(keys), generator=self.ctx.generator)[:count]
        return [keys[i] for i in order.tolist()]

    def passes(self, epoch):
        hp = self.hp
        if self.fine(epoch):
            chosen = list(self.named)
        else:
            chosen = sorted(set(self.draw(self.other_keys, min(hp.layers, len(self.other_keys))) + self.norm_keys))
            if epoch >= hp.reset_epochs:
                candidates = [k for k in chosen if k not in self.norm_keys]
                with torch.no_grad():
                    for key in sorted(self.draw(candidates, min(int(hp.noise_ratio * hp.layers), len(candidates)))):
                        if key not in self.already:
                            p = self.named[key]
                            p.add_(hp.noise * torch.randn(p.shape, generator=self.ctx.generator).to(p.device, p.dtype))
        for key, p in self.named.items():
            p.requires_grad_(key in chosen)
        self.already |= set(chosen)
        return [Pass("retain", self.loader("retain"))]

    def optimizer_group(self, phase, epoch):
        return f"epoch{epoch}"

    def optimizer_settings(self, group):
        settings = super().optimizer_settings(group)
        epoch = int(group.removeprefix("epoch"))
        if self.fine(epoch):
            hp = self.hp
            return settings | {"lr": hp.fine_lrs[epoch - self.fine_start()], "momentum": hp.fine_momentum,
                               "weight_decay": hp.fine_weight_decay}
        return settings

    def loss(self, batch, phase):
        return self.task_loss(batch)
