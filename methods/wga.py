import torch
import torch.nn.functional as F

from mubench.api import Range, Taxonomy, output_problem
from mubench.api.losses import target_rows
from mubench.methods.graddiff import GradDiff


class WGA(GradDiff):
    """WGA, weighted gradient ascent (Wang et al. 2025; OpenUnlearning's ``WGA``): the forget loss is
    −mean over D_f's target tokens of p^β · CE, p = exp(−CE) the token's probability, its weight detached; the retain
    loss as GradDiff's. OpenUnlearning's defaults: β = 1, γ = α = 1, lr 1e-5, 5 epochs."""

    name = "wga"
    summary = "gradient ascent on D_f weighted by each token's probability^β, plus the retain loss"
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    defaults = GradDiff.defaults | dict(beta=1.0, epochs=5)
    search_space = GradDiff.search_space | {"beta": Range(0.0, 5.0)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits", "token_logits")

    def token_weights(self, p: torch.Tensor) -> torch.Tensor:
        return p ** self.hp.beta

    def forget_loss(self, batch):
        logits, targets = target_rows(self.logits(batch), batch.inputs["labels"])
        ce = F.cross_entropy(logits, targets, reduction="none")
        return -(self.token_weights((-ce).exp().detach()) * ce).mean()


class SatImp(WGA):
    """SatImp (Yang et al. 2025; OpenUnlearning's ``SatImp``): WGA with the weight p^β₁ · (1 − p)^β₂, saturation times
    importance. OpenUnlearning's defaults: β₁ = 5, β₂ = 1, γ = 0.1, α = 1, lr 1e-5, 5 epochs."""

    name = "satimp"
    summary = "gradient ascent on D_f weighted by p^β₁·(1−p)^β₂ per token, plus the retain loss"
    defaults = GradDiff.defaults | dict(beta1=5.0, beta2=1.0, gamma=0.1, epochs=5)
    search_space = GradDiff.search_space | {"beta1": Range(0.0, 10.0), "beta2": Range(0.0, 10.0)}

    def token_weights(self, p):
        return p ** self.hp.beta1 * (1 - p) ** self.hp.beta2
