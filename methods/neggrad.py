from mubench.api import Method, Pass, Taxonomy


class NegGrad(Method):
    """Gradient ascent on D_f (Golatkar et al. 2020): maximise the task loss of the forget set.

    Nothing holds D_r in place, so it collapses fast: keep epochs and learning rate small.
    On diffusion models: ascent on D_f's denoising loss (the noise-prediction MSE).
    """

    name = "neggrad"
    summary = "gradient ascent on D_f"
    taxonomy = Taxonomy("loss", "gradient", "none", "dense, internal")
    defaults = Method.defaults | dict(epochs=1, optimizer="adam", lr=5e-5)

    def passes(self, epoch):
        return [Pass("forget", self.loader("forget"))]

    def loss(self, batch, phase):
        return -self.task_loss(batch)
