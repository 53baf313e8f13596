import torch
import torch.nn.functional as F

from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy, output_problem
from mubench.loop import cosine_factor


class ForgetContrastStrengthen(Method):
    """FCS, forget-contrast-strengthen (the 1st solution of the NeurIPS 2023 unlearning challenge; Deep Unlearn's ``KGLTop1``).

    First one pass over D_f pulls its predictions to the uniform distribution
    (KL(uniform ‖ softmax), batch mean). Then every epoch: a contrastive pass over D_f, each
    batch beside a D_r batch, with loss −mean log_softmax(z_f · z_rᵀ / T) (z the logits,
    D_r's detached), under a cosine schedule over all its steps down to ``eta_min``; then a
    pass over D_r with the task loss. Each pass has its own SGD optimiser, as theirs: lr
    and momentum ``lr``/``momentum``/``weight_decay`` for the first, ``forget_*`` for the
    contrast, ``retain_*`` for D_r (its rate × batch size / 64, their scaling). Their
    defaults: 8 epochs, batch 256, lrs 5e-3, 3e-4, 1e-3, weight decays 0, 0, 1e-2,
    momentum 0.9, T = 1.15, eta_min 1e-6.
    """

    name = "fcs"
    summary = "a uniform-KL pass on D_f, then contrast D_f against D_r and strengthen on D_r, each epoch"
    taxonomy = Taxonomy("logits", "data", "loss", "dense, internal")
    defaults = Method.defaults | dict(epochs=8, batch_size=256, optimizer="sgd", lr=0.005, momentum=0.9, weight_decay=0.0,
                                      forget_lr=3e-4, forget_momentum=0.9, forget_weight_decay=0.0, retain_lr=1e-3,
                                      retain_momentum=0.9, retain_weight_decay=1e-2, temperature=1.15, eta_min=1e-6)
    search_space = TRAINING_SPACE | {"forget_lr": Range(1e-5, 1e-1, log=True), "retain_lr": Range(1e-5, 1e-1, log=True),
                                          "temperature": Range(0.5, 5.0), "eta_min": Range(1e-6, 1e-1, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits")

    def setup(self):
        self.contrast_steps = len(self.loader("forget")) * self.hp.epochs

    def passes(self, epoch):
        first = [Pass("uniform", self.loader("forget"))] if epoch == 0 else []
        return first + [Pass("contrast", self.paired()), Pass("retain", self.loader("retain"))]

    def optimizer_group(self, phase, epoch):
        return phase

    def optimizer_settings(self, group):
        settings = super().optimizer_settings(group)
        hp = self.hp
        if group == "contrast":
            return settings | {"lr": hp.forget_lr, "momentum": hp.forget_momentum, "weight_decay": hp.forget_weight_decay}
        if group == "retain":
            return settings | {"lr": hp.retain_lr * hp.batch_size / 64, "momentum": hp.retain_momentum,
                               "weight_decay": hp.retain_weight_decay}
        return settings

    def learning_rate_factor(self, group, step, epoch):
        if group == "contrast":
            return cosine_factor(step, self.contrast_steps, self.hp.eta_min / self.hp.forget_lr)
        return super().learning_rate_factor(group, step, epoch)

    def loss(self, batch, phase):
        if phase == "contrast":
            forget = self.logits(batch.forget)
            retain = self.logits(batch.retain).detach()
            return -F.log_softmax(forget @ retain.T / self.hp.temperature, dim=-1).mean()
        logits = self.logits(batch)
        if phase == "uniform":
            uniform = torch.full_like(logits, 1.0 / logits.shape[-1])
            return F.kl_div(F.log_softmax(logits, dim=-1), uniform, reduction="batchmean")
        return self.task_loss(batch, logits=logits)
