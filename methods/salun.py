import torch

from mubench.api import TRAINING_SPACE, Range, Taxonomy
from mubench.methods.randlabel import RandLabel


class SalUn(RandLabel):
    """SalUn, saliency unlearning (Fan et al. 2024): RandLabel on the salient weights only.

    One pass over D_f sums the gradient of the forgetting loss (−task loss) for every
    weight, from zero; as in the authors' ``generate_mask.py``, the weights are ranked
    by |gradient| over the whole model and exactly ⌊N · ``mask_ratio``⌋ of them are
    salient (ties, such as the zero gradients of units that never fire on D_f, broken
    by parameter order). Training then masks every other gradient, weight decay
    included, so the other weights stay exactly at θ₀. On diffusion models the
    saliency is that of D_f's denoising loss, and the training RandLabel's form there.
    """

    name = "salun"
    summary = "random labels on the weights most salient to D_f"
    taxonomy = Taxonomy("loss", "data", "loss", "sparse, internal")
    search_space = TRAINING_SPACE | {"mask_ratio": Range(0.1, 1.0)}
    defaults = RandLabel.defaults | dict(
        mask_ratio=0.5, epochs=10, optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=256,
    )

    @classmethod
    def check_args(cls, args):
        if not 0 < args["mask_ratio"] <= 1:
            return f"mask_ratio must lie in (0, 1], got {args['mask_ratio']}"
        return super().check_args(args)

    def setup(self):
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        grads = self.accumulated_gradients("forget", lambda batch: -self.task_loss(batch))
        saliency = torch.cat([(g if g is not None else torch.zeros_like(p)).abs().flatten().float()
                              for p, g in zip(self.params, grads)])
        keep = max(1, int(self.hp.mask_ratio * saliency.numel()))
        chosen = torch.zeros(saliency.numel(), dtype=torch.bool, device=saliency.device)
        chosen[torch.argsort(saliency, descending=True, stable=True)[:keep]] = True
        self.masks = [m.view_as(p).to(p.dtype) for p, m in zip(self.params, chosen.split([p.numel() for p in self.params]))]

    def after_backward(self):
        for param, mask in zip(self.params, self.masks):
            if param.grad is not None:
                param.grad.add_(param.detach(), alpha=self.hp.weight_decay).mul_(mask)

    def optimizer_settings(self, group):
        return super().optimizer_settings(group) | {"weight_decay": 0.0}  # applied, masked, in after_backward
