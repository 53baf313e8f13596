import torch
import torch.nn.functional as F

from mubench.api import Method, Range, Taxonomy, output_problem
from mubench.loop import autocast


class FisherForgetting(Method):
    """Fisher forgetting (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net"; Deep Unlearn's ``fisher_new``), no
    training: θ₀ plus Gaussian noise that is small where D_r's Fisher information is large.

    The Fisher diagonal F is Deep Unlearn's ``hessian`` over D_r (unshuffled batches, eval
    mode): for every class y, the squared gradient of the batch's mean cross-entropy
    against y, weighted by the batch's mean probability of y, summed over classes and
    averaged over batches. Each weight's variance is α / (F + 1e-8), clamped at 1e3 (1e2
    for parameters whose first dimension is the number of classes, as the authors'
    ``p.shape[0] == num_classes``); a matrix's variance is its row mean; variances of
    those class-sized parameters and of vectors are multiplied by 10. Each weight then
    becomes θ₀ + √var · N(0, 1), drawn in parameter order from the run's generator.
    Deep Unlearn's defaults: α = 0.2, batch 64.
    """

    name = "fisher"
    summary = "θ₀ plus noise scaled by the inverse Fisher information of D_r (no training)"
    trains = False
    taxonomy = Taxonomy("none", "weights", "loss", "dense, internal")
    defaults = dict(batch_size=64, alpha=0.2)
    search_space = {"alpha": Range(1e-4, 1.0, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits")  # a sum over every class of each example

    @classmethod
    def check_args(cls, args):
        if not args["alpha"] > 0:
            return f"alpha (the noise's scale) must be positive, got {args['alpha']}"
        return super().check_args(args)

    def fisher_diagonal(self) -> list[torch.Tensor]:
        """Deep Unlearn's ``grad2_acc`` over D_r, per trainable parameter."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        total = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.model.eval()
        loader = self.loader("retain", shuffle=False)
        for batch in loader:
            batch = batch.to(self.ctx.device)
            with autocast(self.ctx.device, self.ctx.precision):
                logits = self.logits(batch).float()
            prob = F.softmax(logits, dim=-1).detach()
            for y in range(logits.shape[-1]):
                loss = F.cross_entropy(logits, torch.full_like(batch.inputs["labels"], y))
                grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
                for acc, g in zip(total, grads):
                    if g is not None:
                        acc += prob[:, y].mean() * g.float().pow(2)
        return [acc / len(loader) for acc in total]

    def setup(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        classes = len(self.task.label_names)
        diagonal = self.fisher_diagonal()
        with torch.no_grad():
            for p, fisher in zip(params, diagonal):
                var = (1.0 / (fisher + 1e-8)).clamp(max=1e3)
                if p.shape[0] == classes:
                    var = var.clamp(max=1e2)
                var = self.hp.alpha * var
                if p.ndim > 1:
                    var = var.mean(dim=1, keepdim=True).expand_as(p)
                if p.shape[0] == classes or p.ndim == 1:
                    var = var * 10
                noise = torch.randn(p.shape, generator=self.ctx.generator).to(p.device)
                p.add_((var.sqrt() * noise).to(p.dtype))
