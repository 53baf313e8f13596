import torch

from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy


class BadTeacher(Method):
    """Bad-T, the incompetent teacher (Chundawat et al. 2023).

    The student (θ₀ at first) imitates a randomly initialised teacher on D_f and the
    competent teacher θ₀ on a random ``retain_fraction`` of D_r, drawn anew each epoch:
    KL(softmax(teacher/T) ‖ softmax(student/T)), averaged over the batch (over target
    tokens for language models: the task's distillation loss). The authors' code
    calls ``F.kl_div`` with its default ``mean`` reduction, which also divides by the
    number of classes K; mubench keeps the KL per example (``batchmean``), which is K
    times the authors' value: with Adam, which is invariant to the loss's scale, the
    difference all but vanishes; with SGD, divide the learning rate by K to match.
    On diffusion models the student's noise predictions are distilled (MSE) from a
    randomly initialised UNet's on D_f and θ₀'s on D_r (the task's ``incompetent``).
    """

    name = "badt"
    summary = "distil a random teacher on D_f and θ₀ on part of D_r"
    taxonomy = Taxonomy("logits", "model", "logits", "dense, internal")
    search_space = TRAINING_SPACE | {"temperature": Range(0.5, 5.0), "retain_fraction": Range(0.05, 1.0)}
    defaults = Method.defaults | dict(epochs=1, optimizer="adam", lr=1e-4, temperature=1.0, retain_fraction=0.3)

    def setup(self):
        self.competent = self.ctx.frozen_copy()
        self.incompetent = self.ctx.frozen_copy(self.task.incompetent(self.ctx.fresh_model()))

    def passes(self, epoch):
        return [Pass("mixed", self.loader("train", retain_fraction=self.hp.retain_fraction))]

    def loss(self, batch, phase):
        competent = self.teacher_logits(self.competent, batch)
        incompetent = self.teacher_logits(self.incompetent, batch)
        forget = batch.forget.view(-1, *[1] * (competent.dim() - 1))
        target = torch.where(forget, incompetent, competent)
        return self.distill(self.logits(batch), target, batch, self.hp.temperature)
