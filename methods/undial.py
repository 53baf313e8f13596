import torch.nn.functional as F

from mubench.api import Range, Taxonomy, output_problem
from mubench.api.losses import target_rows
from mubench.methods.graddiff import GradDiff


class UNDIAL(GradDiff):
    """UNDIAL, unlearning via self-distillation with adjusted logits (Dong et al. 2024; OpenUnlearning's ``UNDIAL``): on D_f
    the model learns θ₀'s distribution with the target's logit lowered by β, softmax(z_θ₀ − β · onehot(y)), by
    cross-entropy averaged over the target tokens (OpenUnlearning's code averages over every position, prompt and
    padding included, and lowers the logit at index −100 there). OpenUnlearning's defaults: β = 10, γ = 1, no retain
    loss (α = 0), lr 1e-4, 10 epochs."""

    name = "undial"
    summary = "self-distil θ₀ with the target's logit lowered by β on D_f"
    taxonomy = Taxonomy("logits", "model", "none", "dense, internal")
    needs_reference = True
    defaults = GradDiff.defaults | dict(beta=10.0, alpha=0.0, lr=1e-4)
    search_space = GradDiff.search_space | {"beta": Range(0.1, 100.0, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits", "token_logits")

    def forget_loss(self, batch):
        labels = batch.inputs["labels"]
        logits, targets = target_rows(self.logits(batch), labels)
        teacher, _ = target_rows(self.teacher_logits(self.reference, batch), labels)
        adjusted = teacher - self.hp.beta * F.one_hot(targets, teacher.shape[-1])
        return F.cross_entropy(logits, F.softmax(adjusted, dim=-1))
