from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy


class SCRUB(Method):
    """SCRUB (Kurmanji et al. 2023): a student moves away from θ₀ on D_f and stays near it on D_r.

    Every epoch below ``msteps`` first makes a max pass over D_f (loss −KL_T), then
    every epoch makes a min pass over D_r (γ·task loss + α·KL_T); KL_T (per token for
    language models; on diffusion models the MSE between student and teacher noise
    predictions, where a card sets T = 1) is scaled by T².
    Defaults are the authors': SGD, lr ×0.1 after epoch 3.
    """

    name = "scrub"
    summary = "max-min teacher-student passes over D_f and D_r"
    taxonomy = Taxonomy("loss", "gradient", "loss+representation", "dense, internal")  # MU-Bench's Table 2
    search_space = TRAINING_SPACE | {"alpha": Range(0.0, 1.0), "gamma": Range(0.0, 1.0), "temperature": Range(0.5, 5.0),
                                          "msteps": Range(1, 5)}
    defaults = Method.defaults | dict(
        epochs=5, msteps=3, alpha=0.5, gamma=1.0, temperature=4.0, optimizer="sgd", lr=5e-4,
        momentum=0.9, weight_decay=5e-4, lr_decay_epochs=[3, 5], batch_size=32, forget_batch_size=64,
    )

    def setup(self):
        self.teacher = self.ctx.frozen_copy()

    def passes(self, epoch):
        forget = [Pass("max", self.loader("forget", self.hp.forget_batch_size))] if epoch < self.hp.msteps else []
        return forget + [Pass("min", self.loader("retain"))]

    def loss(self, batch, phase):
        logits = self.logits(batch)
        temperature = self.hp.temperature
        kl = self.distill(logits, self.teacher_logits(self.teacher, batch), batch, temperature) * temperature**2
        if phase == "max":
            return -kl
        return self.hp.gamma * self.task_loss(batch, logits=logits) + self.hp.alpha * kl
