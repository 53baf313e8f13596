"""The reference rows: the untouched original, exact retraining, and fine-tuning on D_r."""
from mubench.api import Fit, Method, Taxonomy


class Original(Method):
    """θ₀ unchanged: the baseline row every method is compared with."""

    name = "original"
    summary = "no change (the baseline row)"
    time_limited = False
    trains = False
    taxonomy = Taxonomy("none", "none", "none", "none")
    defaults = {}
    search_space = {}


class Retrain(Fit):
    """Exact unlearning: a fresh model trained on D_r with the original model's recipe.

    A fresh model is the family's starting point: a pretrained backbone with a new head,
    or, for Stable Diffusion, the pretrained model (retraining fine-tunes its UNet on D_r).
    """

    name = "retrain"
    summary = "exact unlearning: train from scratch on D_r (the reference)"
    taxonomy = Taxonomy("none", "none", "loss", "dense, internal")
    search_space = {}  # the original's own recipe: a reference, never tuned
    part = "retain"

    def setup(self):
        self.ctx.model = self.ctx.fresh_model()


class FineTune(Fit):
    """FT: keep training θ₀ on D_r only and rely on catastrophic forgetting."""

    name = "finetune"
    summary = "continue training on D_r only"
    taxonomy = Taxonomy("none", "none", "loss", "dense, internal")
    recipe = "unlearn"
    time_limited = True
    part = "retain"
