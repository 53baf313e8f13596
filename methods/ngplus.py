from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy


class NegGradPlus(Method):
    """NG+ (Kurmanji et al. 2023's baseline; Deep Unlearn's ``NegGradPlus``): α · loss on D_r − (1 − α) · loss on D_f.

    Each D_r batch is paired with a D_f batch in one step (D_r sets the pass, D_f
    restarts when it runs out), as Deep Unlearn's ``zip(retain_loader, cycle(forget_loader))``.
    Deep Unlearn's defaults: α = 0.95, SGD with lr 0.01 and momentum 0.9, 10 epochs,
    batch 256. Its proximal term to θ₀ is scaled by a weight decay of 0 and is left out.
    """

    name = "ngplus"
    summary = "α·loss on D_r − (1−α)·loss on D_f, in paired batches"
    taxonomy = Taxonomy("loss", "gradient", "loss", "dense, internal")
    train_mode = False  # Deep Unlearn's run_neggrad_epoch: model.eval()
    search_space = TRAINING_SPACE | {"alpha": Range(0.5, 1.0)}
    defaults = Method.defaults | dict(epochs=10, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.9, alpha=0.95)

    @classmethod
    def check_args(cls, args):
        if not 0 <= args["alpha"] <= 1:
            return f"alpha weighs D_r against D_f and lies in [0, 1], got {args['alpha']}"
        return super().check_args(args)

    def passes(self, epoch):
        return [Pass("pair", self.paired(lead="retain"))]

    def loss(self, batch, phase):
        return self.hp.alpha * self.task_loss(batch.retain) - (1 - self.hp.alpha) * self.task_loss(batch.forget)
