from mubench.api import TRAINING_SPACE, Pass, Range, Taxonomy
from mubench.methods.references import FineTune


class L1Sparse(FineTune):
    """ℓ1-sparse unlearning (Jia et al. 2023, "Model Sparsity Can Simplify Machine Unlearning"; their ``FT_l1``):
    fine-tune on D_r with the loss plus α_t · ‖θ‖₁ over every parameter.

    α_t = α · (1 − e / (E − E₀)) in epoch e < E − E₀ (E epochs, the last E₀ = ``no_l1_epochs``
    without the penalty), and α throughout when E₀ = E, as the authors' ``FT_iter``. Their
    defaults: α = 5e-4, SGD with lr 0.01, momentum 0.9, weight decay 5e-4, 10 epochs, batch 256.
    """

    name = "l1sparse"
    summary = "fine-tune on D_r with a decaying ℓ1 penalty on the weights"
    taxonomy = Taxonomy("none", "none", "loss", "sparse, internal")
    search_space = TRAINING_SPACE | {"alpha": Range(1e-5, 1e-2, log=True)}
    defaults = FineTune.defaults | dict(epochs=10, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                                        alpha=5e-4, no_l1_epochs=0)

    @classmethod
    def check_args(cls, args):
        if not args["alpha"] >= 0:
            return f"alpha (the ℓ1 weight) must not be negative, got {args['alpha']}"
        if not 0 <= args["no_l1_epochs"] <= args["epochs"]:
            return f"no_l1_epochs lies between 0 and epochs ({args['epochs']}), got {args['no_l1_epochs']}"
        return super().check_args(args)

    def penalty_weight(self, epoch: int) -> float:
        """α_t of epoch ``epoch``: linear decay to 0 over the first E − E₀ epochs, then 0."""
        decaying = self.hp.epochs - self.hp.no_l1_epochs
        if decaying == 0:
            return self.hp.alpha
        return self.hp.alpha * (1 - epoch / decaying) if epoch < decaying else 0.0

    def passes(self, epoch):
        self.alpha_t = self.penalty_weight(epoch)
        return [Pass("retain", self.loader("retain"))]

    def loss(self, batch, phase):
        loss = self.task_loss(batch)
        if self.alpha_t:
            loss = loss + self.alpha_t * sum(p.abs().sum() for p in self.model.parameters())
        return loss
