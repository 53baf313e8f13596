"""Text-to-image generation with latent diffusion (Stable Diffusion), on class-labelled images.

Each training image has a class, and the class's prompt is the card's
``generation.template`` over its first word (``"a photo of a {name}"``). The words
come from the card's ``generation.classes`` table; Tiny ImageNet's ships with the task
and maps each WordNet id to its lemmas and its ImageNet-1k index. Images are encoded
once into VAE latents, cached like any preprocessing. The UNet alone trains, with the
noise-prediction MSE at a random timestep. Noise and timesteps come from the run's
generator in training and from each example's index in evaluation.

Evaluation records two things:

- **Per real example:** the denoising loss, averaged over ``loss_timesteps`` fixed
  timesteps (the loss attack reads it).
- **Per generated image:** for ``images_per_prompt`` examples of each class in a part,
  one image generated from the class prompt (DDIM, classifier-free guidance, seeded by
  the example's index). Each image gets its CLIP score against the prompt (open_clip,
  ``100·max(cos, 0)``), and the classifier's top-1 and top-5 hits: does an ImageNet
  classifier (torchvision) name the prompt's class?
"""
from __future__ import annotations

import copy
import csv
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mubench.api import ArrowExamples, TensorExamples
from mubench.errors import UserError
from mubench.tasks.classification import ClassificationTask

SETTINGS = {"template": "a photo of a {name}", "classes": None, "resolution": 512, "images_per_prompt": 1, "steps": 50,
            "guidance_scale": 7.5, "seed": 0, "loss_timesteps": 4,
            "clip": {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"},
            "classifier": {"name": "resnet50", "weights": "IMAGENET1K_V2"},
            "fid": {"name": "inception_v3", "weights": "IMAGENET1K_V1"}}
IMAGENET_CLASSES = 1000


class LatentDiffusion(nn.Module):
    """The parts of a Stable Diffusion pipeline that unlearning needs; only the UNet trains.

    ``noise_scheduler`` adds noise in training (DDPM), ``sampler`` generates (DDIM).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, noise_scheduler, sampler):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)
        self.tokenizer, self.noise_scheduler, self.sampler = tokenizer, noise_scheduler, sampler

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    @property
    def latent_scale(self) -> int:
        """How many pixels one latent covers along a side (8 for Stable Diffusion)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def embed(self, prompts: list[str]) -> torch.Tensor:
        """The frozen text encoder's hidden states of ``prompts``, padded to the tokenizer's length."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids.to(self.unet.device)
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def predict_noise(self, latents: torch.Tensor, timesteps: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """ε(x_t, t, prompt) of the UNet."""
        return self.unet(latents, timesteps, encoder_hidden_states=self.embed(prompts)).sample


def unloadable(pretrained: str, error: Exception) -> UserError:
    return UserError(f"Stable Diffusion '{pretrained}' cannot be loaded: {str(error).strip().splitlines()[0]}")


class StableDiffusion:
    """The ``stable_diffusion`` architecture: Stable Diffusion 1.x/2.x from a diffusers repo
    (``unet``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``)."""

    def __call__(self, task, pretrained: str) -> LatentDiffusion:
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet")
            vae = AutoencoderKL.from_pretrained(pretrained, subfolder="vae")
            text_encoder = CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder")
            tokenizer = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer")
            config = DDPMScheduler.load_config(pretrained, subfolder="scheduler")
        except (OSError, ValueError) as e:
            raise unloadable(pretrained, e) from None
        return LatentDiffusion(unet, vae, text_encoder, tokenizer, DDPMScheduler.from_config(config), DDIMScheduler.from_config(config))

    def skeleton(self, task, pretrained: str) -> nn.Module:
        """UNet, VAE and text encoder (``unet``, ``vae``, ``text_encoder``), built from their configs on the meta device."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        try:
            with torch.device("meta"):
                return nn.ModuleDict({
                    "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(pretrained, subfolder="unet")),
                    "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(pretrained, subfolder="vae")),
                    "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(pretrained, subfolder="text_encoder"))})
        except (OSError, ValueError) as e:
            raise unloadable(pretrained, e) from None


def per_example_normal(shape: tuple, seeds, device) -> torch.Tensor:
    """One standard normal draw of ``shape`` per seed: a value that depends on its example alone, never on its batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def clip_scores(model, tokenizer, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """CLIP score of each image (``[B, 3, H, W]`` in [0, 1]) with its prompt: ``100 · max(cos, 0)`` (torchmetrics' definition)."""
    config = model.visual.preprocess_cfg
    size = config["size"] if isinstance(config["size"], (tuple, list)) else (config["size"],) * 2
    pixels = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    mean = torch.tensor(config["mean"], device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(config["std"], device=images.device).view(1, -1, 1, 1)
    image_features = F.normalize(model.encode_image((pixels - mean) / std).float(), dim=-1)
    text_features = F.normalize(model.encode_text(tokenizer(prompts).to(images.device)).float(), dim=-1)
    return 100 * (image_features * text_features).sum(-1).clamp(min=0)


def classifier_hits(classifier, preprocess, images: torch.Tensor, targets: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether the classifier's top-1 and its top-``k`` classes hold each image's target class."""
    logits = classifier(preprocess(images.float()))
    top = logits.topk(k, dim=-1).indices
    return (top[:, 0] == targets).float(), (top == targets[:, None]).any(-1).float()


class TextToImageTask(ClassificationTask):
    """Class-labelled images (column roles ``image``, ``label``) and the class prompts a latent diffusion model draws them from.

    The primary metric is the classifier's top-1 accuracy on generated images
    (``clf_acc``), so MU-Bench's accuracy-style overall score applies: test prompts
    keep their accuracy, D_f's prompts fall to the classifier's chance (1/1000).
    """

    name = "text_to_image"
    metric = "clf_acc"
    output = "noise"
    records = frozenset({"loss", "stratum", "clip_score", "clf_correct", "clf_top5", "image", "prompt", "fid_generated", "fid_real"})
    generated = frozenset({"clip_score", "clf_correct", "clf_top5", "image", "prompt", "fid_generated", "fid_real"})
    sample_records = frozenset({"image", "prompt"})

    def __init__(self, card):
        super().__init__(card)
        self.settings = copy.deepcopy(SETTINGS) | card.data.get("generation", {})
        self.pretrained = None
        self.num_train_timesteps = 1000

    @property
    def chance(self) -> float:
        return 1.0 / IMAGENET_CLASSES

    def use_model(self, params: dict) -> None:
        from diffusers import DDPMScheduler

        self.pretrained = params["pretrained"]
        try:
            self.num_train_timesteps = DDPMScheduler.load_config(self.pretrained, subfolder="scheduler")["num_train_timesteps"]
        except (OSError, ValueError) as e:
            raise unloadable(self.pretrained, e) from None

    def prepare(self, train) -> None:
        super().prepare(train)
        table = self.class_table()
        missing = [name for name in self.label_names if name not in table]
        if missing:
            raise UserError(f"task '{self.card.name}': classes {missing[:3]} are not in generation.classes")
        self.words = [table[name][1] for name in self.label_names]
        self.imagenet_index = torch.tensor([table[name][0] for name in self.label_names])
        self.prompts = [self.settings["template"].format(name=words.split(",")[0].strip()) for words in self.words]

    def class_table(self) -> dict[str, tuple[int, str]]:
        """The card's class table, a TSV (class name, ImageNet-1k index, words) beside the card or among the built-in tasks."""
        name = self.settings["classes"]
        if name is None:
            raise UserError(f"task '{self.card.name}': key 'generation.classes': a text_to_image card names its class table")
        beside, builtin = self.card.path.parent / name, Path(__file__).parent / name
        path = beside if beside.is_file() or not builtin.is_file() else builtin
        try:
            rows = [row for row in csv.reader(path.read_text().splitlines(), delimiter="\t") if row and not row[0].startswith("#")]
        except OSError as e:
            raise UserError(f"task '{self.card.name}': key 'generation.classes': cannot read {path}: {e.strerror}") from None
        return {row[0]: (int(row[1]), row[2]) for row in rows[1:]}

    # --- data -------------------------------------------------------------------------
    @functools.cached_property
    def vae(self):
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(self.pretrained, subfolder="vae").eval()
        return vae.to("cuda") if torch.cuda.is_available() else vae

    def preprocess(self, batch):
        size = self.settings["resolution"]
        images = [image.convert("RGB").resize((size, size), resample=3) for image in batch[self.column("image")]]  # bicubic
        pixels = torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            latents = self.vae.encode(pixels.to(self.vae.device)).latent_dist.mean * self.vae.config.scaling_factor
        return {"latents": latents.cpu().numpy().astype(np.float16), "labels": self.targets(batch[self.column("label")])}

    def preprocess_key(self) -> dict:
        return {"task_type": self.name, "vae": self.pretrained, "resolution": self.settings["resolution"],
                "labels": self.label_names, "columns": self.columns}

    def encode(self, split):
        """Cached latents (float16, as stored), labels, and each example's index (its per-example draws' seed)."""
        rows = ArrowExamples(split).__getitems__(np.arange(len(split)))
        return TensorExamples(latents=torch.from_numpy(np.stack(rows["latents"])), labels=torch.as_tensor(np.asarray(rows["labels"])),
                              index=torch.arange(len(split)))

    def collate(self, items):
        return items

    def draw(self, inputs, generator):
        """Noise and a timestep per example: from the run's generator in training, from the example's index otherwise."""
        latents = inputs["latents"]
        if generator is not None:
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(0, self.num_train_timesteps, (len(latents),), generator=generator)
        else:
            noise = per_example_normal(latents.shape[1:], inputs["index"] * 2 + 1, "cpu")
            timesteps = torch.stack([torch.randint(0, self.num_train_timesteps, (), generator=torch.Generator().manual_seed(int(i) * 2))
                                     for i in inputs["index"]])
        return {**inputs, "noise": noise, "timesteps": timesteps}

    def generation_positions(self, part) -> np.ndarray:
        """The first ``images_per_prompt`` examples of each class in the part (in their order in the split)."""
        labels = part.data.tensors["labels"][torch.as_tensor(part.indices)].numpy()
        order = np.argsort(part.indices, kind="stable")
        taken: dict[int, int] = {}
        chosen = []
        for position in order:
            label = int(labels[position])
            if taken.get(label, 0) < self.settings["images_per_prompt"]:
                taken[label] = taken.get(label, 0) + 1
                chosen.append(position)
        return np.sort(np.asarray(chosen, dtype=np.int64))

    # --- model ------------------------------------------------------------------------
    def model_kwargs(self) -> dict:
        return {}

    def class_prompts(self, labels: torch.Tensor) -> list[str]:
        return [self.prompts[int(label)] for label in labels]

    def forward(self, model, inputs):
        """The UNet's noise prediction for each example's latents, noised at its timestep, under its class prompt."""
        latents = inputs["latents"].float()
        noisy = model.noise_scheduler.add_noise(latents, inputs["noise"], inputs["timesteps"])
        return model.predict_noise(noisy, inputs["timesteps"], self.class_prompts(inputs["labels"]))

    def loss(self, prediction, inputs):
        """The noise-prediction MSE per example."""
        return (prediction.float() - inputs["noise"].float()).pow(2).flatten(1).mean(1)

    def distill(self, student, teacher, inputs, temperature: float = 1.0):
        """MSE between student and teacher noise predictions (a temperature has no meaning here)."""
        return (student.float() - teacher.float()).pow(2).flatten(1).mean(1).mean()

    def incompetent(self, model):
        """The fresh model with its UNet re-initialised at random (the pretrained UNet is no incompetent teacher)."""
        from diffusers import UNet2DConditionModel

        model.unet = UNet2DConditionModel.from_config(model.unet.config).to(model.unet.device)
        return model

    # --- generation and evaluation ----------------------------------------------------
    def latent_shape(self, model) -> tuple[int, int, int]:
        """The shape of one image's latents at the card's resolution."""
        side = self.settings["resolution"] // model.latent_scale
        return model.unet.config.in_channels, side, side

    def sample_latents(self, model, prompts: list[str], noise: torch.Tensor, steps: int, guidance: float,
                       stop_after: int | None = None) -> torch.Tensor:
        """DDIM (η = 0) with classifier-free guidance from ``noise``, for ``stop_after`` of its ``steps`` or all of them."""
        sampler = copy.deepcopy(model.sampler)
        sampler.set_timesteps(steps)
        latents = noise.to(model.unet.device) * sampler.init_noise_sigma
        context = torch.cat([model.embed([""] * len(prompts)), model.embed(prompts)])
        for t in sampler.timesteps[:stop_after]:
            both = sampler.scale_model_input(torch.cat([latents] * 2), t)
            unconditional, conditional = model.unet(both, t, encoder_hidden_states=context).sample.chunk(2)
            latents = sampler.step(unconditional + guidance * (conditional - unconditional), t, latents).prev_sample
        return latents

    def generate(self, model, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One image per example from its class prompt, in [0, 1], with the card's steps and guidance; its noise seeded
        by the card's seed and the example's index."""
        s = self.settings
        noise = per_example_normal(self.latent_shape(model), [s["seed"] * 1_000_003 + int(i) for i in index], "cpu")
        latents = self.sample_latents(model, self.class_prompts(labels), noise, s["steps"], s["guidance_scale"])
        images = model.vae.decode(latents / model.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def evaluate_batch(self, model, inputs, needs):
        labels = inputs["labels"]
        records = {"stratum": labels} if "stratum" in needs else {}
        if "loss" in needs:
            latents, device = inputs["latents"].float(), labels.device
            losses = []
            for k in range(self.settings["loss_timesteps"]):  # fixed timesteps spread over the schedule
                t = torch.full((len(labels),), (2 * k + 1) * self.num_train_timesteps // (2 * self.settings["loss_timesteps"]),
                               device=device)
                noise = per_example_normal(latents.shape[1:], inputs["index"] * 7919 + k, device)
                noisy = model.noise_scheduler.add_noise(latents, noise, t)
                prediction = model.predict_noise(noisy, t, self.class_prompts(labels))
                losses.append(self.loss(prediction, {"noise": noise}))
            records["loss"] = torch.stack(losses).mean(0)
        if needs & self.generated:
            images = self.generate(model, labels, inputs["index"])
            if "image" in needs:
                records["image"] = list((images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy())
                records["prompt"] = self.class_prompts(labels)
            if "clip_score" in needs:
                clip, tokenizer = self.clip(images.device)
                records["clip_score"] = clip_scores(clip, tokenizer, images, self.class_prompts(labels))
            if needs & {"clf_correct", "clf_top5"}:
                classifier, preprocess = self.classifier(images.device)
                top1, top5 = classifier_hits(classifier, preprocess, images, self.imagenet_index.to(images.device)[labels])
                records["clf_correct"], records["clf_top5"] = top1, top5
            if "fid_generated" in needs:  # real images: the VAE's reconstructions of their cached latents
                real = (model.vae.decode(inputs["latents"].float() / model.vae.config.scaling_factor).sample.float() / 2 + 0.5).clamp(0, 1)
                extractor, preprocess = self.fid_features(images.device)
                records["fid_generated"] = extractor(preprocess(images))
                records["fid_real"] = extractor(preprocess(real))
        return records

    def clip(self, device):
        """The card's open_clip model and tokenizer (``generation.clip``: ``model``, ``pretrained``, optional ``config``)."""
        return _clip(tuple(sorted(self.settings["clip"].items())), str(self.card.path.parent), device)

    def fid_features(self, device):
        """The card's FID feature extractor (``generation.fid``: a torchvision ImageNet model, its penultimate layer)."""
        model, preprocess = _classifier(self.settings["fid"]["name"], self.settings["fid"]["weights"], device)
        return _penultimate(model), preprocess

    def classifier(self, device):
        """The card's torchvision ImageNet classifier and its preprocessing (``generation.classifier``: ``name``, ``weights``)."""
        return _classifier(self.settings["classifier"]["name"], self.settings["classifier"]["weights"], device)


@functools.cache
def _clip(spec: tuple, base: str, device):
    """An open_clip model and tokenizer, loaded once per process: ``spec`` is the card's ``clip`` items; ``config`` and a
    ``pretrained`` file are read relative to ``base`` (the card's folder), any other ``pretrained`` is open_clip's tag."""
    import open_clip

    spec = dict(spec)
    if "config" in spec:
        open_clip.add_model_config(Path(base) / spec["config"])
    pretrained = spec.get("pretrained")
    if pretrained and (Path(base) / pretrained).is_file():
        pretrained = str(Path(base) / pretrained)
    try:
        model = open_clip.create_model(spec["model"], pretrained=pretrained)
    except (RuntimeError, OSError, ValueError) as e:
        raise UserError(f"CLIP model {spec['model']} ({pretrained}) cannot be loaded: {str(e).strip().splitlines()[0]}") from None
    return model.eval().to(device), open_clip.get_tokenizer(spec["model"])


@functools.cache
def _penultimate(model: nn.Module) -> nn.Module:
    """The classifier with its last linear layer replaced by the identity: its pooled features."""
    features = copy.deepcopy(model)
    head = "fc" if hasattr(features, "fc") else "classifier"
    setattr(features, head, nn.Identity())
    return features.eval()


@functools.cache
def _classifier(name: str, weights: str, device):
    """A torchvision ImageNet model with its named weights (read from torch hub's cache, else downloaded) and their
    preprocessing, loaded once per process."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)[weights]
        model = torchvision.models.get_model(name, weights=enum)
    except (KeyError, ValueError, RuntimeError, OSError) as e:
        raise UserError(f"classifier {name} ({weights}) cannot be loaded: {str(e).strip().splitlines()[0]}") from None
    return model.eval().to(device), enum.transforms()
