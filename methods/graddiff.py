import torch
import torch.nn.functional as F

from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy
from mubench.api.losses import target_rows
from mubench.data import Batch


class GradDiff(Method):
    """GradDiff, gradient difference (Liu et al. 2022; OpenUnlearning's ``GradDiff``): γ · forget loss + α · retain loss on
    a D_f batch and a D_r batch taken together (each D_f batch with the next D_r batch).

    The forget loss is −NLL; the retain loss (``retain_loss``) NLL (``nll``) or the KL from
    θ₀'s predictions to the model's (``kl``; per target token for language models, where
    OpenUnlearning's averages over every position, prompt and padding included). NLL is
    transformers' loss, which OpenUnlearning calls: the mean over all the batch's target
    tokens (every example's class for classifiers; the denoising loss for diffusion models).
    Subclasses (NPO, SimNPO, IdkDPO, RMU, UNDIAL, WGA, SatImp) change the forget loss, and
    some the retain loss, and keep the rest. OpenUnlearning's
    defaults: γ = α = 1, AdamW, lr 1e-5, no weight decay, 10 epochs, batch 8 × 4
    accumulated steps.
    """

    name = "graddiff"
    summary = "γ·(−loss on D_f) + α·(loss or KL to θ₀ on D_r), in paired batches"
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    needs_reference = False
    defaults = Method.defaults | dict(epochs=10, batch_size=8, grad_accum_steps=4, optimizer="adamw", lr=1e-5, weight_decay=0.0,
                                      gamma=1.0, alpha=1.0, retain_loss="nll")
    choices = Method.choices | {"retain_loss": ("nll", "kl")}
    search_space = TRAINING_SPACE | {"alpha": Range(0.0, 10.0), "gamma": Range(0.0, 10.0)}

    def setup(self):
        if self.needs_reference or self.hp.retain_loss == "kl":
            self.reference = self.ctx.frozen_copy()

    def passes(self, epoch):
        return [Pass("pair", self.paired())]

    def loss(self, batch, phase):
        loss = self.hp.gamma * self.forget_loss(batch.forget)
        if self.hp.alpha:
            loss = loss + self.hp.alpha * self.retain_loss(batch.retain)
        return loss

    def nll(self, batch: Batch) -> torch.Tensor:
        """The batch's negative log-likelihood, the mean over all its target tokens (transformers' ``loss``)."""
        if self.task.output == "noise":
            return self.task_loss(batch)
        return F.cross_entropy(*target_rows(self.logits(batch), batch.inputs["labels"]))

    def forget_loss(self, batch: Batch):
        return -self.nll(batch)

    def retain_loss(self, batch: Batch):
        if self.hp.retain_loss == "kl":
            return self.distill(self.logits(batch), self.teacher_logits(self.reference, batch), batch)
        return self.nll(batch)
