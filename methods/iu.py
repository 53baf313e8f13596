import torch

from mubench.api import Method, Range, Taxonomy
from mubench.loop import autocast


class InfluenceUnlearning(Method):
    """IU, influence unlearning with a WoodFisher inverse-Hessian estimate (Izzo et al. 2021; Jia et al. 2023's ``Wfisher``,
    Deep Unlearn's ``InfluenceUnlearning``), no training: one Newton-style step θ₀ + α · H⁻¹v.

    v = G_f / (n_f + n_r) − G_r · n_f / ((n_f + n_r) · n_r), where G_f and G_r are D_f's and D_r's
    gradients of the loss summed over their examples (batches of ``batch_size``, each
    batch's mean-loss gradient times its size; eval mode). H⁻¹v follows their
    ``woodfisher`` recursion over single D_r examples in order, with damping N =
    ``samples``: the first example's gradient g₀ starts o = g₀; each next gradient g
    updates k ← k − (k·g / (N + o·g)) · o, then o ← o − (o·g / (N + o·g)) · o, and the
    recursion stops after example N + 1. Defaults: α = 0.2, batch 256, N = 1000.
    """

    name = "iu"
    summary = "one influence-function step along the WoodFisher inverse Hessian (no training)"
    trains = False
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    defaults = dict(batch_size=256, alpha=0.2, samples=1000)
    search_space = {"alpha": Range(1e-3, 10.0, log=True)}

    @classmethod
    def check_args(cls, args):
        if not args["samples"] >= 1:
            return f"samples (the WoodFisher damping and example count) must be at least 1, got {args['samples']}"
        return super().check_args(args)

    def flat_gradient(self, batch) -> torch.Tensor:
        """The gradient of the batch's mean task loss over every trainable parameter, as one vector."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        batch = batch.to(self.ctx.device)
        with autocast(self.ctx.device, self.ctx.precision):
            loss = self.task_loss(batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten() for p, g in zip(params, grads)])

    def summed_gradient(self, part: str) -> torch.Tensor:
        """Σ over ``part``'s batches of (batch size × the gradient of its mean loss)."""
        return sum(self.flat_gradient(batch) * len(batch) for batch in self.loader(part, shuffle=False))

    def inverse_hessian_product(self, v: torch.Tensor) -> torch.Tensor:
        n = self.hp.samples
        k, o = v.clone(), None
        for index, batch in enumerate(self.loader("retain", batch_size=1, shuffle=False)):
            g = self.flat_gradient(batch)
            if o is None:
                o = g.clone()
            else:
                tmp = torch.dot(o, g)
                k -= (torch.dot(k, g) / (n + tmp)) * o
                o -= (tmp / (n + tmp)) * o
            if index > n:
                break
        return k

    def setup(self):
        self.model.eval()
        n_forget, n_retain = len(self.ctx.data.forget), len(self.ctx.data.retain)
        forget = self.summed_gradient("forget") / (n_forget + n_retain)
        retain = self.summed_gradient("retain") * (n_forget / ((n_forget + n_retain) * n_retain))
        perturbation = self.hp.alpha * self.inverse_hessian_product(forget - retain)
        with torch.no_grad():
            start = 0
            for p in (p for p in self.model.parameters() if p.requires_grad):
                p.add_(perturbation[start:start + p.numel()].view_as(p).to(p.dtype))
                start += p.numel()
