import re

import torch
import torch.nn.functional as F

from mubench.api import Range, Taxonomy
from mubench.api.anatomy import blocks
from mubench.errors import UserError
from mubench.methods.graddiff import GradDiff


class RMU(GradDiff):
    """RMU, representation misdirection for unlearning (Li et al. 2024, WMDP; OpenUnlearning's ``RMU``).

    At the ``layer`` module (``auto``: the middle block, ⌊(n − 1)/2⌋ of the model's n
    blocks, T5's decoder blocks), the forget loss pulls D_f's hidden states to c · u, u a
    random unit vector (``rand`` normalised, drawn once) and c ``steering``; the retain
    loss (``representation``) keeps D_r's hidden states at θ₀'s. Both are the squared
    error averaged over the hidden size, summed over target-token positions, divided by
    their count, averaged over the batch (their ``compute_activation_loss``). Only
    parameters whose names match ``trainable`` (a regex) move. OpenUnlearning's
    defaults: c = 2 (its config; the class's own default is 20), all parameters, γ = α = 1.
    """

    name = "rmu"
    summary = "steer D_f's hidden states at a layer to a random vector, keep D_r's at θ₀'s"
    taxonomy = Taxonomy("representation", "model", "representation", "dense, internal")
    needs_reference = True
    defaults = GradDiff.defaults | dict(layer="auto", steering=2.0, trainable=".*", retain_loss="representation")
    choices = GradDiff.choices | {"retain_loss": ("representation", "nll", "kl")}
    search_space = GradDiff.search_space | {"steering": Range(0.5, 300.0, log=True)}

    @classmethod
    def unsupported(cls, task, skeleton):
        if task.output != "token_logits" or not hasattr(task, "target_positions"):
            return f"it steers a language model's hidden states at a layer; task type '{task.name}' is not a language model"
        return None

    @classmethod
    def check_args(cls, args):
        try:
            re.compile(args["trainable"])
        except re.error as e:
            return f"trainable is not a regular expression ({e})"
        return super().check_args(args)

    def module_name(self) -> str:
        """The hooked module's name in the model."""
        if self.hp.layer != "auto":
            return self.hp.layer
        stack = blocks(self.model)
        middle = stack[(len(stack) - 1) // 2]
        return next(name for name, m in self.model.named_modules() if m is middle)

    def setup(self):
        super().setup()
        name = self.module_name()
        modules = dict(self.model.named_modules())
        if name not in modules:
            raise UserError(f"method 'rmu': the model has no module '{name}' (layer); e.g. {', '.join(list(modules)[1:4])}")
        self.module, self.reference_module = modules[name], dict(self.reference.named_modules())[name]
        for key, p in self.model.named_parameters():
            p.requires_grad_(bool(re.fullmatch(self.hp.trainable, key)))
        self.control = None

    def hidden(self, model, module, batch) -> torch.Tensor:
        """``module``'s output (its first, for a tuple) when ``model`` runs on ``batch``."""
        seen = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:
            self.task.forward(model, batch.inputs)
        finally:
            handle.remove()
        return seen[0]

    def activation_loss(self, hidden: torch.Tensor, target: torch.Tensor, batch) -> torch.Tensor:
        mask = self.task.target_positions(batch.inputs)
        if mask.shape != hidden.shape[:2]:
            raise UserError(f"method 'rmu': layer '{self.module_name()}' gives states shaped {tuple(hidden.shape)}, not one "
                            f"per target position {tuple(mask.shape)}; name a decoder block")
        squared = F.mse_loss(hidden.float(), target.float().expand_as(hidden), reduction="none").mean(-1)
        return ((squared * mask).sum(1) / mask.sum(1).clamp_min(1)).mean()

    def forget_loss(self, batch):
        hidden = self.hidden(self.model, self.module, batch)
        if self.control is None:
            u = torch.rand(hidden.shape[-1], generator=self.ctx.generator)
            self.control = (u / u.norm() * self.hp.steering).to(hidden.device)
        return self.activation_loss(hidden, self.control, batch)

    def retain_loss(self, batch):
        if self.hp.retain_loss != "representation":
            return super().retain_loss(batch)
        with torch.no_grad():
            reference = self.hidden(self.reference, self.reference_module, batch)
        return self.activation_loss(self.hidden(self.model, self.module, batch), reference, batch)
