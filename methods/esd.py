import torch
import torch.nn.functional as F

from mubench.api import Method, Pass, Range, Taxonomy

SUBSETS = ("noxattn", "xattn", "full")


class ESD(Method):
    """ESD, erasing concepts from diffusion models (Gandikota et al. 2023), on the forgotten classes' prompts.

    The UNet learns to predict, under a forgotten class's prompt c, what θ₀ predicts with
    negative guidance away from c:

        MSE(ε_θ(x_t, c, t), ε_θ₀(x_t, t) − η · (ε_θ₀(x_t, c, t) − ε_θ₀(x_t, t)))

    As in the authors' ``train-esd.py``, x_t is sampled by the model being trained:
    DDIM (η = 0) with guidance ``start_guidance`` under c, from fresh noise, for a random
    t_enc of ``ddim_steps`` steps. t is drawn uniformly in [t_enc/ddim_steps · 1000,
    (t_enc + 1)/ddim_steps · 1000), their code's convention, kept as it is. ``train_method``
    follows theirs: ``noxattn`` (ESD-u, for objects: every UNet weight but the
    cross-attention, the time embedding and the output layer), ``xattn`` (ESD-x: only
    cross-attention) or ``full``. One step per D_f batch; the images are not used, only
    their classes' prompts. The defaults are the authors': Adam, lr 1e-5, η = 1, start
    guidance 3, 50 DDIM steps, batch 1.
    """

    name = "esd"
    summary = "negative guidance away from the forgotten classes' prompts (diffusion)"
    taxonomy = Taxonomy("logits", "model", "none", "sparse, internal")
    search_space = {"lr": Range(1e-6, 1e-3, log=True), "negative_guidance": Range(0.5, 3.0), "epochs": Range(1, 10)}
    defaults = Method.defaults | dict(epochs=1, batch_size=1, optimizer="adam", lr=1e-5, negative_guidance=1.0,
                                      start_guidance=3.0, ddim_steps=50, train_method="noxattn")
    choices = Method.choices | {"train_method": SUBSETS}

    @classmethod
    def unsupported(cls, task, skeleton):
        if not hasattr(task, "sample_latents"):
            return f"ESD erases concepts from a diffusion model; task type '{task.name}' is not text_to_image"
        if task.card.data["deletion"].get("mode") != "classes":
            return "ESD erases whole concepts: it needs class-wise deletion (deletion.mode: classes)"
        return None

    def setup(self):
        self.frozen = self.ctx.frozen_copy()
        for name, param in self.model.unet.named_parameters():
            erased = {"noxattn": not (name.startswith(("conv_out", "conv_norm_out", "time_embedding")) or "attn2" in name),
                      "xattn": "attn2" in name, "full": True}[self.hp.train_method]
            param.requires_grad_(erased)

    def passes(self, epoch):
        return [Pass("forget", self.loader("forget"))]

    def loss(self, batch, phase):
        task, hp, generator = self.task, self.hp, self.ctx.generator
        prompts = task.class_prompts(batch.inputs["labels"])
        t_enc = int(torch.randint(hp.ddim_steps, (), generator=generator))
        low, high = round(t_enc / hp.ddim_steps * 1000), round((t_enc + 1) / hp.ddim_steps * 1000)
        t = torch.randint(low, high, (len(prompts),), generator=generator).to(self.ctx.device)
        noise = torch.randn((len(prompts), *task.latent_shape(self.model)), generator=generator)
        with torch.no_grad():
            z = task.sample_latents(self.model, prompts, noise, hp.ddim_steps, hp.start_guidance, stop_after=t_enc)
            unconditional = self.frozen.predict_noise(z, t, [""] * len(prompts))
            conditional = self.frozen.predict_noise(z, t, prompts)
        target = unconditional - hp.negative_guidance * (conditional - unconditional)
        return F.mse_loss(self.model.predict_noise(z, t, prompts).float(), target.float())
