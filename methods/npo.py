import torch
import torch.nn.functional as F

from mubench.api import Range, Taxonomy, output_problem
from mubench.api.losses import example_logprob
from mubench.methods.graddiff import GradDiff


class NPO(GradDiff):
    """NPO, negative preference optimisation (Zhang et al. 2024; OpenUnlearning's ``NPO``): the forget loss is
    −(2/β) · mean log σ(−β · (log π_θ(y|x) − log π_θ₀(y|x))) over D_f, log π the target's log-likelihood (summed over its
    tokens), θ₀ the frozen reference; the retain loss as GradDiff's. OpenUnlearning's defaults: β = 0.1, γ = α = 1."""

    name = "npo"
    summary = "negative preference optimisation against θ₀ on D_f, plus the retain loss"
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    needs_reference = True
    defaults = GradDiff.defaults | dict(beta=0.1)
    search_space = GradDiff.search_space | {"beta": Range(0.01, 10.0, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits", "token_logits")  # a likelihood of the target

    def log_ratio(self, inputs: dict) -> torch.Tensor:
        """log π_θ(y|x) − log π_θ₀(y|x) per example of ``inputs``."""
        ours = example_logprob(self.task.forward(self.model, inputs), inputs["labels"])
        with torch.no_grad():
            reference = example_logprob(self.task.forward(self.reference, inputs), inputs["labels"])
        return ours - reference

    def forget_loss(self, batch):
        beta = self.hp.beta
        return -2 / beta * F.logsigmoid(-beta * self.log_ratio(batch.inputs)).mean()


class SimNPO(GradDiff):
    """SimNPO, simple NPO (Fan et al. 2024; OpenUnlearning's ``SimNPO``), without a reference model: the forget loss is
    −(2/β) · mean log σ(β · (NLL/|y| − δ)) over D_f, NLL/|y| the target's mean per-token negative log-likelihood (the task
    loss); the retain loss as GradDiff's. OpenUnlearning's defaults: β = 4.5, δ = 0, γ = 0.125, α = 1."""

    name = "simnpo"
    summary = "length-normalised NPO without a reference model, plus the retain loss"
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    defaults = GradDiff.defaults | dict(beta=4.5, delta=0.0, gamma=0.125)
    search_space = GradDiff.search_space | {"beta": Range(0.1, 10.0, log=True), "delta": Range(0.0, 5.0)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits", "token_logits")

    def forget_loss(self, batch):
        beta = self.hp.beta
        nll = self.task.loss(self.logits(batch), batch.inputs)
        return -2 / beta * F.logsigmoid(beta * (nll - self.hp.delta)).mean()
