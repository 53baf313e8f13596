"""Text-to-image: the harness's generation and unlearning steps against a plain diffusers pipeline and a plain loop.

Generation: the harness's evaluation pass asked for images only (loader, ``evaluate_batch``: DDIM with classifier-free
guidance, VAE decoding) against ``StableDiffusionPipeline`` called on the same prompts, steps, guidance, batch and
resolution (``output_type="pt"``, no safety checker: the harness has none). Unlearning: NegGrad's optimiser steps
through the harness (loader, the task's noise draw, UNet forward, MSE, backward, Adam) against a plain loop over a
TensorDataset of the same cached latents doing the same. Each pair runs interleaved round by round in one process;
both sync the GPU before the clock stops. Prints per-round ratios (harness time / plain time), their median and
spread, images/s, steps/s and, on a GPU, peak memory.

Setups:
- ``tiny`` (default): the test fixtures' tiny Stable Diffusion on Tiny ImageNet's layout, 16-pixel images;
- ``real-size``: Stable Diffusion v1.4's UNet, VAE and CLIP text encoder from their configs (random weights) at
  512 px on synthetic images, in bf16 on a GPU; ``--lora`` unlearns through LoRA adapters instead.

    python benchmarks/bench_diffusion.py [--setup tiny|real-size] [--rounds 5] [--images 16] [--device auto] [--lora]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="mubench-bench-hub-")  # before huggingface_hub loads
os.environ["MUBENCH_HOME"] = tempfile.mkdtemp(prefix="mubench-bench-home-")
os.environ.setdefault("TORCH_HOME", tempfile.mkdtemp(prefix="mubench-bench-torch-"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from report import ratio_line, sync  # noqa: E402

from mubench.api.registry import Registry  # noqa: E402
from mubench.evaluation import Evaluator  # noqa: E402
from mubench.harness import Prepared  # noqa: E402
from mubench.loop import autocast, make_optimizer, resolve_device, resolve_precision  # noqa: E402

GENERATION_TARGET, UNLEARN_TARGET = 1.10, 1.15
REPO = Path(__file__).resolve().parents[1]
SD14 = {
    "unet": dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8),
    "vae": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512),
    "text": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77),
}


def setup(kind: str, root: Path) -> tuple[Path, Path, dict]:
    """The data folder, a card folder and the card's settings for the chosen setup."""
    from fixtures import diffusion

    data = diffusion.tiny_imagenet(root / "data", per_class_train=24 if kind == "tiny" else 8, per_class_valid=2)
    cards = root / "cards"
    cards.mkdir()
    config, weights = diffusion.tiny_clip(cards)
    if kind == "tiny":
        diffusion.publish_models()
        generation = {"resolution": 16, "steps": 10}
    else:
        publish_sd14()
        diffusion.publish_classifier()
        generation = {"resolution": 512, "steps": 25}
    card = {"include": str(REPO / "tasks" / "tiny_imagenet" / "tiny_imagenet.yaml"), "task": "t2i_bench",
            "generation": generation | {"clip": {"model": "mubench-tiny-clip", "config": config, "pretrained": weights},
                                        "classifier": {"name": "resnet18", "weights": "IMAGENET1K_V1"}},
            "deletion": {"ratios": [0.1], "default_ratio": 0.1, "split_seed": 0}}
    (cards / "bench.yaml").write_text(yaml.safe_dump(card))
    return data, cards, generation


def publish_sd14() -> None:
    """Stable Diffusion v1.4's architecture from its configs (random weights), with the fixtures' CLIP tokenizer (77 tokens)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from fixtures import diffusion
    from fixtures.hub import snapshot
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = diffusion.clip_tokenizer()
    tok.model_max_length = 77
    folder = snapshot("CompVis/stable-diffusion-v1-4")
    UNet2DConditionModel(**SD14["unet"]).save_pretrained(folder / "unet")
    AutoencoderKL(**SD14["vae"]).save_pretrained(folder / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, **SD14["text"])).save_pretrained(folder / "text_encoder")
    tok.save_pretrained(folder / "tokenizer")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    diffusion.mark_clip_sample_off(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))



def harness_generation(evaluator: Evaluator, model, data, n: int) -> tuple[float, torch.Tensor]:
    part = data.part("train")
    loader = data.loader_of(part.subset(np.arange(n)), evaluator.batch_size)
    sync(evaluator.device)
    start = time.perf_counter()
    records = evaluator.records(model, loader, "generate", frozenset({"image"}))
    sync(evaluator.device)
    return time.perf_counter() - start, np.stack(records["image"])


def plain_generation(pipeline, prompts: list[str], settings: dict, batch: int, device, precision) -> float:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for first in range(0, len(prompts), batch):
            pipeline(prompts[first:first + batch], height=settings["resolution"], width=settings["resolution"],
                     num_inference_steps=settings["steps"], guidance_scale=7.5, output_type="pt")
    sync(device)
    return time.perf_counter() - start


def harness_unlearning(prepared, model, device, precision, steps: int, batch: int, lora) -> tuple[float, int]:
    ctx = prepared.context(copy.deepcopy(model), seed=0, device=device, precision=precision, lora=lora)
    if lora is not None:
        from mubench.lora import apply_lora

        ctx.model, _ = apply_lora(ctx.model, lora)
    neggrad = Registry().method("neggrad")
    method = neggrad(ctx, neggrad.resolve_args(prepared.card, {"batch_size": batch, "epochs": 1}))
    ctx.data.forget = ctx.data.forget[:steps * batch]
    sync(device)
    report = method.unlearn()
    sync(device)
    return report.seconds, report.steps


def plain_unlearning(prepared, model, device, precision, steps: int, batch: int, lora) -> tuple[float, int]:
    """A TensorDataset of the same latents, noise and timesteps drawn from a generator, the UNet, MSE, backward, Adam."""
    model = copy.deepcopy(model).to(device)
    if lora is not None:
        from mubench.lora import apply_lora

        model, _ = apply_lora(model, lora)
    task = prepared.task
    forget = prepared.data(device).forget[:steps * batch]
    tensors = prepared.train.tensors
    dataset = torch.utils.data.TensorDataset(tensors["latents"][forget], tensors["labels"][forget])
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    unet = model.unet if lora is None else model.base_model.model.unet
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], "adam", 5e-5)
    done = 0
    sync(device)
    start = time.perf_counter()
    model.train()
    for latents, labels in loader:
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (len(latents),), generator=generator)
        latents, noise, t = latents.to(device).float(), noise.to(device), t.to(device)
        with autocast(device, precision):
            noisy = unet_scheduler(model).add_noise(latents, noise, t)
            context = embed(model, task.class_prompts(labels))
            loss = -(unet(noisy, t, encoder_hidden_states=context).sample.float() - noise).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done += 1
    sync(device)
    return time.perf_counter() - start, done


def unet_scheduler(model):
    return getattr(model, "noise_scheduler", None) or model.base_model.model.noise_scheduler


def embed(model, prompts):
    return (model if hasattr(model, "embed") else model.base_model.model).embed(prompts)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", choices=["tiny", "real-size"], default="tiny")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="unlearning steps per round")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lora", action="store_true", help="unlearn through LoRA adapters (rank 8)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="mubench-bench-t2i-"))
    data_dir, cards, settings = setup(args.setup, root)

    from diffusers import StableDiffusionPipeline

    from mubench.lora import LoraSpec

    prepared = Prepared(Registry(include_paths=[cards]), "t2i_bench", None, None, data_dir)
    prepared.load()
    model = prepared.family.build().to(device)
    task, data = prepared.task, prepared.data(device)
    evaluator = Evaluator(task, [], device, precision, batch_size=args.batch)
    labels = prepared.train.tensors["labels"][:args.images]
    prompts = task.class_prompts(labels)
    pipeline = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                                       scheduler=copy.deepcopy(model.sampler), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.set_progress_bar_config(disable=True)
    lora = LoraSpec(rank=8) if args.lora else None
    print(f"setup {args.setup} on {device} ({precision}), {settings['resolution']} px, {settings['steps']} DDIM steps, "
          f"{args.images} images and {args.steps} unlearning steps per round, batch {args.batch}{', LoRA rank 8' if lora else ''}")
    harness_generation(evaluator, model, data, args.batch)  # warm-up of both sides
    plain_generation(pipeline, prompts[:args.batch], settings, args.batch, device, precision)
    generation, unlearning, speeds = [], [], {"h_img": [], "p_img": [], "h_step": [], "p_step": []}
    for _ in range(args.rounds):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        ours, _ = harness_generation(evaluator, model, data, args.images)
        theirs = plain_generation(pipeline, prompts, settings, args.batch, device, precision)
        generation.append(ours / theirs)
        speeds["h_img"].append(args.images / ours)
        speeds["p_img"].append(args.images / theirs)
        ours, steps_h = harness_unlearning(prepared, model, device, precision, args.steps, args.batch, lora)
        theirs, steps_p = plain_unlearning(prepared, model, device, precision, args.steps, args.batch, lora)
        assert steps_h == steps_p, (steps_h, steps_p)
        unlearning.append((ours / steps_h) / (theirs / steps_p))
        speeds["h_step"].append(steps_h / ours)
        speeds["p_step"].append(steps_p / theirs)
    memory = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else ""
    med = {k: statistics.median(v) for k, v in speeds.items()}
    print(f"{'what':<34} {'ratio':>7} {'spread':>13}  (harness time / plain time, per round)")
    print(ratio_line("generation (images)", generation, GENERATION_TARGET,
               f"harness {med['h_img']:.2f} img/s, pipeline {med['p_img']:.2f} img/s{memory}"))
    print(ratio_line("unlearning (NegGrad steps)", unlearning, UNLEARN_TARGET,
               f"harness {med['h_step']:.2f} steps/s, plain {med['p_step']:.2f} steps/s"))
    print("per-round ratios: generation " + " ".join(f"{r:.3f}" for r in generation)
          + "; unlearning " + " ".join(f"{r:.3f}" for r in unlearning))


if __name__ == "__main__":
    main()
