import torch

from mubench.api import TRAINING_SPACE, Pass, Range, Taxonomy, output_problem
from mubench.api.anatomy import conv2d_layers, without_convolutions
from mubench.loop import cosine_factor
from mubench.methods.references import FineTune


class ConfuseFineTune(FineTune):
    """CFW, confuse and fine-tune with class weights (the 3rd solution of the NeurIPS 2023 unlearning challenge; Deep
    Unlearn's ``KGLTop3``).

    The stem convolution's weights are replaced by a draw from N(w, ``start_std``²); the
    model is fine-tuned on D_r with the batch's mean cross-entropy times the mean of its
    examples' class weights (their ``CustomCrossEntropyLoss``), the weights scikit-learn's
    "balanced" ones over D_r's classes (n / (classes present · n_c)); cosine schedule over
    the epochs; before the last epoch the stem is confused again with ``final_std``.
    Deep Unlearn's ``vision_confuser`` perturbs the model's direct children named
    ``conv…``, which on their ResNet-18 is the stem ``conv1`` alone: mubench perturbs the
    first 2-D convolution on any family. Defaults are theirs: std 0.6 then 0.005, SGD, lr
    7e-4, momentum 0.9, weight decay 5e-4, 4 epochs, batch 64.
    """

    name = "cfw"
    summary = "noise on the stem convolution, then class-weighted fine-tuning on D_r"
    taxonomy = Taxonomy("none", "weights", "loss", "dense, internal")
    defaults = FineTune.defaults | dict(epochs=4, batch_size=64, optimizer="sgd", lr=7e-4, momentum=0.9, weight_decay=5e-4,
                                        start_std=0.6, final_std=0.005)
    search_space = TRAINING_SPACE | {"start_std": Range(0.0, 1.0), "final_std": Range(0.0, 1.0)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return output_problem(task, "class_logits") or without_convolutions(skeleton)

    def confuse(self, std: float) -> None:
        """The stem convolution's weights ← N(w, std²), drawn from the run's generator."""
        _, stem = conv2d_layers(self.model, trainable=True)[0]
        with torch.no_grad():
            noise = torch.randn(stem.weight.shape, generator=self.ctx.generator).to(stem.weight.device, stem.weight.dtype)
            stem.weight.add_(std * noise)

    def setup(self):
        self.confuse(self.hp.start_std)
        counts = self.class_counts("retain").float()
        present = counts > 0
        weights = torch.zeros_like(counts)
        weights[present] = counts.sum() / (present.sum() * counts[present])
        self.class_weights = weights.to(self.ctx.device)

    def passes(self, epoch):
        if epoch == self.hp.epochs - 1 and epoch > 0:
            self.confuse(self.hp.final_std)
        return [Pass("retain", self.loader("retain"))]

    def loss(self, batch, phase):
        return self.task_loss(batch) * self.class_weights[batch.inputs["labels"]].mean()

    def learning_rate_factor(self, group, step, epoch):
        return cosine_factor(epoch, self.hp.epochs)
