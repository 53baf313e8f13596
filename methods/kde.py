import torch.nn.functional as F

from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy, output_problem
from mubench.api.anatomy import conv2d_layers, head, reset_like_torch
from mubench.loop import cosine_factor


class KnowledgeDistillationEntropy(Method):
    """KDE, knowledge distillation after a reset (the 6th solution of the NeurIPS 2023 unlearning challenge; Deep Unlearn's
    ``KGLTop6``).

    The stem convolution (the first 2-D convolution, where there is one) and the head are
    re-initialised (``reset_parameters``); θ₀ is the teacher. For ``warmup_epochs`` the
    student distils the teacher (KL at temperature T, batch mean), then for ``epochs`` it
    trains on D_r with soft cross-entropy to the teacher at T + cross-entropy + the same
    KL, a cosine schedule over those epochs, each stage with its own SGD optimiser.
    Their warm-up distils on the challenge's held-out validation split; mubench has no
    split that is neither trained on nor evaluated, so the warm-up distils on D_r (D_test
    would leak into the test metric). Defaults are theirs: 3 + 3 epochs, batch 64, T = 5,
    SGD lr 9e-4 then 1e-3, momentum 0.9, weight decay 5e-4.
    """

    name = "kde"
    summary = "reset the stem and head, distil θ₀, then train on D_r with distillation and cross-entropy"
    taxonomy = Taxonomy("none", "weights", "loss+logits", "dense, internal")
    defaults = Method.defaults | dict(warmup_epochs=3, epochs=3, batch_size=64, optimizer="sgd", lr=9e-4, momentum=0.9,
                                      weight_decay=5e-4, retain_lr=1e-3, retain_momentum=0.9, retain_weight_decay=5e-4,
                                      temperature=5.0)
    search_space = TRAINING_SPACE | {"retain_lr": Range(1e-5, 1e-1, log=True), "temperature": Range(0.5, 5.0),
                                          "warmup_epochs": Range(0, 10)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits")

    @classmethod
    def check_args(cls, args):
        if not args["warmup_epochs"] >= 0:
            return f"warmup_epochs must not be negative, got {args['warmup_epochs']}"
        return super().check_args(args)

    def setup(self):
        self.teacher = self.ctx.frozen_copy()
        stem = conv2d_layers(self.model, trainable=True)[:1]
        for layer in [conv for _, conv in stem] + [head(self.model)]:
            reset_like_torch(layer, self.ctx.generator)

    def total_epochs(self):
        return self.hp.warmup_epochs + self.hp.epochs

    def passes(self, epoch):
        return [Pass("warmup" if epoch < self.hp.warmup_epochs else "retain", self.loader("retain"))]

    def optimizer_group(self, phase, epoch):
        return phase

    def optimizer_settings(self, group):
        settings = super().optimizer_settings(group)
        if group == "retain":
            hp = self.hp
            return settings | {"lr": hp.retain_lr, "momentum": hp.retain_momentum, "weight_decay": hp.retain_weight_decay}
        return settings

    def learning_rate_factor(self, group, step, epoch):
        if group == "retain":
            return cosine_factor(epoch - self.hp.warmup_epochs, self.hp.epochs)
        return super().learning_rate_factor(group, step, epoch)

    def loss(self, batch, phase):
        logits, teacher, t = self.logits(batch), self.teacher_logits(self.teacher, batch), self.hp.temperature
        kl = self.distill(logits, teacher, batch, t)
        if phase == "warmup":
            return kl
        soft = -(F.softmax(teacher.float() / t, dim=-1) * F.log_softmax(logits.float() / t, dim=-1)).sum(-1).mean()
        return soft + self.task_loss(batch, logits=logits) + kl
