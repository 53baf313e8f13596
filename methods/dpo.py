import torch
import torch.nn.functional as F

from mubench.api import Taxonomy
from mubench.methods.npo import NPO


class IdkDPO(NPO):
    """IdkDPO, direct preference optimisation towards refusals (Rafailov et al. 2023, as TOFU and OpenUnlearning's ``DPO``
    unlearn with it): the forget loss is −(2/β) · mean log σ(β · (r(idk) − r(y_f))), r = log π_θ − log π_θ₀ of a target
    (summed over its tokens), idk an answer drawn for each D_f example from the card's ``generation.refusals``; the
    retain loss as GradDiff's. OpenUnlearning's defaults: β = 0.1, γ = α = 1."""

    name = "dpo"
    summary = "prefer the card's refusal answers to D_f's targets (IdkDPO), plus the retain loss"
    taxonomy = Taxonomy("loss", "data", "loss", "dense, internal")

    @classmethod
    def unsupported(cls, task, skeleton):
        if task.output != "token_logits" or not hasattr(task, "with_target_texts"):
            return f"it prefers refusal answers to D_f's target texts; task type '{task.name}' does not generate text"
        if not task.generation.get("refusals"):
            return f"task '{task.card.name}' names no refusal answers (generation.refusals in its card)"
        return None

    def forget_loss(self, batch):
        refusals = self.task.generation["refusals"]
        drawn = torch.randint(len(refusals), (len(batch),), generator=self.ctx.generator).tolist()
        idk = self.task.with_target_texts(batch.inputs, [refusals[i] for i in drawn])
        beta = self.hp.beta
        return -2 / beta * F.logsigmoid(beta * (self.log_ratio(idk) - self.log_ratio(batch.inputs))).mean()
