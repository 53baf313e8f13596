from mubench.api import Method, Pass, TaskType, Taxonomy


class RandLabel(Method):
    """Random labels (Graves et al. 2021): train on D_f ∪ D_r where D_f carries wrong targets.

    ``relabel``: ``random`` draws a new label uniformly over all classes for every D_f
    example in every batch (SalUn's and Deep Unlearn's code: the true label comes back
    with probability 1/K); ``random_wrong`` draws among the wrong labels only;
    ``shift`` uses (y + 1) mod K (MU-Bench's code). Generative tasks give D_f a D_r
    example's target under ``random`` and ``random_wrong``. On diffusion models D_f's
    images are paired with another class's prompt (``random_wrong``, as SalUn's SD code).
    """

    name = "randlabel"
    summary = "train on D_f (wrong labels) and D_r"
    taxonomy = Taxonomy("loss", "data", "loss", "dense, internal")
    defaults = Method.defaults | dict(relabel="random")
    choices = Method.choices | {"relabel": ("random", "random_wrong", "shift")}

    @classmethod
    def unsupported(cls, task, skeleton):
        if type(task).relabel is TaskType.relabel:
            return f"task type '{task.name}' cannot corrupt targets (it does not implement TaskType.relabel)"
        return None

    def passes(self, epoch):
        return [Pass("train", self.loader("train"))]

    def loss(self, batch, phase):
        inputs = self.task.relabel(batch.inputs, batch.forget, self.hp.relabel, self.ctx.generator)
        return self.task_loss(batch, inputs=inputs)
