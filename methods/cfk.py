from mubench.api import TRAINING_SPACE, Range, Taxonomy, output_problem
from mubench.api.anatomy import blocks, head, init_like_deep_unlearn
from mubench.methods.references import FineTune


class CatastrophicForgettingK(FineTune):
    """CF-k, catastrophic forgetting of the last k blocks (Goel et al. 2022; Deep Unlearn's ``CatastrophicForgettingK``).

    Everything but the last ``blocks`` blocks and the head is frozen; those are fine-tuned
    on D_r with the task loss plus (``proximal``/2) · ‖θ − θ_start‖² over the trainable
    weights (SCRUB's ``fk_finetune``, θ_start the weights as fine-tuning starts), the
    model in eval mode (``run_train_epoch``), by plain SGD whose learning rate is
    multiplied by ``lr_decay`` for every milestone ⌊0.5E⌋, ⌊0.8E⌋, ⌊0.9E⌋ that the epoch
    has passed (strictly). Blocks are the model's longest layer list (a ResNet's stages,
    a transformer's layers; :func:`mubench.api.anatomy.blocks`), the head its last linear
    layer. Deep Unlearn's defaults: k = 1, lr 0.01, proximal weight 0.1, decay 0.1, 10
    epochs, batch 256.
    """

    name = "cfk"
    summary = "fine-tune only the last k blocks and the head on D_r"
    taxonomy = Taxonomy("none", "none", "loss", "sparse, internal")
    train_mode = False
    defaults = FineTune.defaults | dict(epochs=10, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.0, weight_decay=0.0,
                                        lr_decay=0.1, blocks=1, proximal=0.1)
    search_space = TRAINING_SPACE | {"blocks": Range(1, 10), "proximal": Range(1e-5, 1e-1, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        problem = output_problem(task, "class_logits", "token_logits")  # a head: the last linear layer
        return problem or (None if blocks(skeleton()) else "the model has no blocks to train")

    @classmethod
    def check_args(cls, args):
        if not args["blocks"] >= 1:
            return f"blocks (how many of the last blocks train) must be at least 1, got {args['blocks']}"
        return super().check_args(args)

    def trained_modules(self) -> list:
        """The last ``blocks`` blocks and the head."""
        return blocks(self.model)[-self.hp.blocks:] + [head(self.model)]

    def prepare(self, modules: list) -> None:
        """What happens to the trained modules before fine-tuning (CF-k: nothing)."""

    def setup(self):
        modules = self.trained_modules()
        self.prepare(modules)
        self.model.requires_grad_(False)
        for module in modules:
            module.requires_grad_(True)
        self.start = [(p, p.detach().clone()) for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch, phase):
        distance = sum((p - p0).pow(2).sum() for p, p0 in self.start)
        return self.task_loss(batch) + self.hp.proximal / 2 * distance

    def learning_rate_factor(self, group, step, epoch):
        epochs = self.hp.epochs
        milestones = [int(epochs * 0.5), int(epochs * 0.8), int(epochs * 0.9)]
        return self.hp.lr_decay ** sum(epoch > m for m in milestones)


class ExactUnlearningK(CatastrophicForgettingK):
    """EU-k, exact unlearning of the last k blocks (Goel et al. 2022; Deep Unlearn's ``ExactUnlearningK``): CF-k after
    re-initialising the last ``blocks`` blocks and the head (Deep Unlearn's ``init_weights``: Kaiming-uniform
    convolutions, Xavier-uniform linear layers, zero biases, BatchNorm at 1 and 0), so that they learn D_r alone."""

    name = "euk"
    summary = "re-initialise the last k blocks and the head, then train them on D_r"
    taxonomy = Taxonomy("none", "weights", "loss", "sparse, internal")

    def prepare(self, modules):
        for module in modules:
            init_like_deep_unlearn(module, self.ctx.generator)
