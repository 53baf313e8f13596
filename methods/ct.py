import torch

from mubench.api import TRAINING_SPACE, Range, Taxonomy
from mubench.api.anatomy import conv2d_layers, without_convolutions
from mubench.loop import cosine_factor
from mubench.methods.references import FineTune


class ConvolutionTranspose(FineTune):
    """CT, convolution transpose (the 5th solution of the NeurIPS 2023 unlearning challenge; Deep Unlearn's ``KGLTop5``).

    Every 2-D convolution kernel is transposed spatially (its last two axes swapped), then
    the model is fine-tuned on D_r with the task loss, the learning rate annealed by a
    cosine over the epochs (``CosineAnnealingLR(T_max = epochs)``, stepped per epoch).
    Defaults are Deep Unlearn's: SGD, lr 1e-3, momentum 0.9, weight decay 5e-4, 3 epochs,
    batch 64. Only models with convolutions (``nn.Conv2d``, as their code) qualify.
    """

    name = "ct"
    summary = "transpose every convolution kernel, then fine-tune on D_r (cosine schedule)"
    taxonomy = Taxonomy("none", "weights", "loss", "dense, internal")
    defaults = FineTune.defaults | dict(epochs=3, batch_size=64, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4)
    search_space = TRAINING_SPACE | {"batch_size": Range(32, 256, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        return without_convolutions(skeleton)

    def setup(self):
        with torch.no_grad():
            for _, conv in conv2d_layers(self.model, trainable=True):
                conv.weight.data = conv.weight.data.transpose(2, 3).contiguous()

    def learning_rate_factor(self, group, step, epoch):
        return cosine_factor(epoch, self.hp.epochs)
