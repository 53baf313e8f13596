import torch

from mubench.api import Method, Range, Taxonomy
from mubench.loop import autocast


class SSD(Method):
    """Selective synaptic dampening (Foster et al. 2024; their ``ParameterPerturber``), no training at all.

    The diagonal importance of each weight is the mean over batches of its squared
    gradient of the task loss, on D_f (I_f) and on the whole training set (I_D), with
    the model in eval mode. Where I_f > α · I_D the weight is multiplied by
    min(1, λ · I_D / I_f). The authors' defaults: α = 10 (``selection_weighting``),
    λ = 1 (``dampening_constant``), batch 64.
    """

    name = "ssd"
    summary = "dampen the weights far more important to D_f than to the training set (no training)"
    trains = False
    taxonomy = Taxonomy("loss", "weights", "loss", "sparse, internal")
    defaults = dict(batch_size=64, alpha=10.0, dampening=1.0)
    search_space = {"alpha": Range(1.0, 100.0, log=True), "dampening": Range(0.1, 10.0, log=True)}

    @classmethod
    def check_args(cls, args):
        for key in ("alpha", "dampening"):
            if not args[key] > 0:
                return f"{key} must be positive, got {args[key]}"
        return super().check_args(args)

    def importance(self, part: str) -> list[torch.Tensor]:
        """Per parameter, the mean over ``part``'s batches (unshuffled) of the squared gradient of the batch's mean loss."""
        params = list(self.model.parameters())
        total = [torch.zeros_like(p) for p in params]
        self.model.eval()
        loader = self.loader(part, shuffle=False)
        for batch in loader:
            batch = batch.to(self.ctx.device)
            self.model.zero_grad(set_to_none=True)
            with autocast(self.ctx.device, self.ctx.precision):
                loss = self.task_loss(batch)
            loss.backward()
            for sum_, p in zip(total, params):
                if p.grad is not None:
                    sum_ += p.grad.detach().float().pow(2)
        self.model.zero_grad(set_to_none=True)
        return [sum_ / len(loader) for sum_ in total]

    def setup(self):
        forget, whole = self.importance("forget"), self.importance("train")
        with torch.no_grad():
            for p, f, d in zip(self.model.parameters(), forget, whole):
                selected = f > self.hp.alpha * d
                factor = (self.hp.dampening * d[selected] / f[selected]).clamp(max=1.0)
                p[selected] = p[selected] * factor.to(p.dtype)
