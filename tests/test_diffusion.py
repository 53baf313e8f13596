"""Text-to-image unlearning (Tiny ImageNet, Stable Diffusion) on the real loading path, offline.

The fixture is Tiny ImageNet's hub layout (parquet, WordNet-id ClassLabel, ``train``/``valid``),
a tiny Stable Diffusion in the diffusers layout at ``CompVis/stable-diffusion-v1-4``, a tiny
open_clip model from a registered config, and torchvision's ResNet-18 read from torch hub's
cache. The cards include the real ones and shrink resolution, steps and models for a CPU.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from fixtures import diffusion
from torch import nn

from mubench.errors import UserError
from mubench.results import validate_result
from mubench.tasks.diffusion import classifier_hits, clip_scores

REPO = Path(__file__).resolve().parents[1]
METHODS = ["neggrad", "randlabel", "badt", "scrub", "salun", "esd", "retrain", "original", "finetune", "ct", "msg", "iu", "graddiff"]
# The roster's methods that read class or token logits, or a classifier's head: each says so in one line.
REFUSING = ["fisher", "fcs", "cfw", "prmq", "kde", "rni", "cfk", "euk", "npo", "simnpo", "dpo", "rmu", "undial", "wga", "satimp"]


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """Tiny cards over the real ones: 16-pixel images, 4 DDIM steps, the tiny CLIP and ResNet-18, θ₀ trained here."""
    folder = tmp_path_factory.mktemp("t2i_cards")
    config, weights = diffusion.tiny_clip(folder)
    shrink = {"generation": {"resolution": 16, "steps": 4, "images_per_prompt": 1, "loss_timesteps": 2,
                             "clip": {"model": "mubench-tiny-clip", "config": config, "pretrained": weights},
                             "classifier": {"name": "resnet18", "weights": "IMAGENET1K_V1"},
                             "fid": {"name": "resnet18", "weights": "IMAGENET1K_V1"}},
              "metrics": ["clf_acc", "clf_top5_acc", "clip_score", "mse", "mia_loss_acc", "mia_loss_indiscernibility", "fid"],
              "models": {"sd-v1-4": {"architecture": "stable_diffusion", "params": {"pretrained": "CompVis/stable-diffusion-v1-4"},
                                     "original": "train"}},
              "train": {"epochs": 6, "batch_size": 8, "lr": 2.0e-3}, "unlearn": {"epochs": 1, "batch_size": 8, "lr": 1.0e-3},
              "methods": {"esd": {"ddim_steps": 4, "lr": 1.0e-3}}, "eval": {"batch_size": 16, "samples_per_part": 1}}
    for name, base in (("t2i_tiny", "tiny_imagenet.yaml"), ("t2i_classes_tiny", "tiny_imagenet_classes.yaml")):
        card = {"include": str(REPO / "tasks" / "tiny_imagenet" / base), "task": name, **shrink}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(card))
    return folder


@pytest.fixture(scope="module")
def t2i_registry(cards, task_data):
    from mubench.api.registry import Registry

    task_data("tiny_imagenet")  # the data, the tiny Stable Diffusion and the classifier's weights
    return Registry(include_paths=[cards])


@pytest.fixture(scope="module")
def run_t2i(t2i_registry, task_data, tmp_path_factory):
    from mubench.harness import RunConfig, run

    out, done = tmp_path_factory.mktemp("t2i_results"), {}

    def go(method, task="t2i_classes_tiny", ratio=None):
        if (task, method) not in done:
            config = RunConfig(task=task, method=method, data_dir=task_data("tiny_imagenet"), output_path=out, precision="fp32",
                               deletion_ratio=ratio)
            done[task, method] = run(config, t2i_registry)
        return done[task, method]

    return go


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_on_text_to_image(run_t2i, t2i_registry, method):
    result, path = run_t2i(method)
    validate_result(result, path, t2i_registry)
    original, unlearned = result["results"]["original"], result["results"]["unlearned"]
    for part in ("test", "forget", "retain", "forgotten"):
        for metric in ("clf_acc", "clf_top5_acc", "clip_score", "mse"):
            assert unlearned[f"{part}_{metric}"] is not None, (part, metric)
    assert 0 <= unlearned["forget_clip_score"] <= 100 and unlearned["forget_mse"] > 0
    assert unlearned["retain_fid"] >= 0 and unlearned["forget_fid"] is None  # one image of D_f's one class: no covariance
    if method == "original":
        assert original == unlearned
    elif method != "retrain":
        assert original["forget_mse"] != unlearned["forget_mse"]  # the UNet moved
    assert result["split"]["forget_classes"] and result["split"]["n_forget"] == 10  # one whole class of four
    samples = result["samples"]
    assert {(s["model"], s["part"]) for s in samples} >= {("original", "forget"), ("unlearned", "forget"), ("unlearned", "test")}
    for sample in samples:
        assert (path.parent / sample["file"]).is_file() and sample["prompt"].startswith("a photo of a ")
    forgotten_prompt = {s["prompt"] for s in samples if s["part"] == "forget"}
    assert len(forgotten_prompt) == 1  # D_f's prompt is its class's


@pytest.mark.parametrize("method", REFUSING)
def test_methods_for_logits_refuse_a_diffusion_model_in_one_line(t2i_registry, task_data, tmp_path, method):
    from mubench.errors import UserError
    from mubench.harness import RunConfig, run

    config = RunConfig(task="t2i_classes_tiny", method=method, data_dir=task_data("tiny_imagenet"), output_path=tmp_path / "out")
    with pytest.raises(UserError, match=f"^method '{method}' cannot run on task 't2i_classes_tiny': "):
        run(config, t2i_registry)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["ct", "msg"])
def test_convolution_methods_edit_the_unet_and_leave_the_frozen_vae_alone(t2i_registry, task_data, method):
    """CT and MSG edit the convolutions that train (the UNet's), never the VAE's, which encodes and decodes the images."""
    import copy

    from mubench.harness import Prepared

    prepared = Prepared(t2i_registry, "t2i_classes_tiny", None, None, task_data("tiny_imagenet"))
    prepared.load()
    model = prepared.family.build()
    vae, unet = copy.deepcopy(model.vae.state_dict()), copy.deepcopy(model.unet.state_dict())
    cls = t2i_registry.method(method)
    cls(prepared.context(model, 0, torch.device("cpu"), "fp32"), cls.resolve_args(prepared.card)).setup()
    assert all(torch.equal(value, model.vae.state_dict()[key]) for key, value in vae.items())
    assert any(not torch.equal(value, model.unet.state_dict()[key]) for key, value in unet.items())


def test_the_trained_original_learned_the_training_images(run_t2i):
    result, _ = run_t2i("original")
    from mubench.files import read_json

    sidecar = read_json(Path(result["model_info"]["original"]) / "model.json")
    assert sidecar["metrics"]["train_mse"] < sidecar["metrics_before"]["train_mse"]


def test_esd_says_in_one_line_where_it_cannot_run(t2i_registry, run_t2i, task_data, tmp_path):
    from mubench.harness import RunConfig, resolve

    with pytest.raises(UserError, match="ESD erases whole concepts: it needs class-wise deletion"):
        resolve(RunConfig(task="t2i_tiny", method="esd", output_path=tmp_path), t2i_registry)
    with pytest.raises(UserError, match="ESD erases concepts from a diffusion model; task type 'image_classification'"):
        resolve(RunConfig(task="digits", method="esd", output_path=tmp_path), t2i_registry)


def test_sample_wise_deletion_runs_and_reads_d_f_from_the_denoising_loss(run_t2i, t2i_registry):
    result, path = run_t2i("neggrad", task="t2i_tiny", ratio=0.1)
    validate_result(result, path, t2i_registry)
    assert "forget_classes" not in result["split"] and result["split"]["n_forget"] == 4  # 10% of 40, stratified
    assert result["results"]["unlearned"]["forget_mse"] > result["results"]["original"]["forget_mse"]  # ascent on D_f


def test_generation_and_draws_do_not_depend_on_the_batch(t2i_registry, task_data):
    from mubench.harness import Prepared

    prepared = Prepared(t2i_registry, "t2i_classes_tiny", None, None, task_data("tiny_imagenet"), original="pretrained")
    prepared.load()
    task, model = prepared.task, prepared.family.build().eval()
    labels, index = torch.tensor([0, 1, 2]), torch.tensor([3, 17, 30])
    with torch.no_grad():
        together = task.generate(model, labels, index)
        alone = task.generate(model, labels[1:2], index[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-5)
    latents = prepared.train.tensors["latents"][:3]
    drawn = task.draw({"latents": latents, "index": index}, None)
    again = task.draw({"latents": latents[1:2], "index": index[1:2]}, None)
    assert torch.equal(drawn["noise"][1:2], again["noise"]) and torch.equal(drawn["timesteps"][1:2], again["timesteps"])
    run_a = task.draw({"latents": latents, "index": index}, torch.Generator().manual_seed(5))
    run_b = task.draw({"latents": latents, "index": index}, torch.Generator().manual_seed(5))
    assert torch.equal(run_a["noise"], run_b["noise"]) and not torch.equal(run_a["noise"], drawn["noise"])


def test_prompts_come_from_the_shipped_class_table(t2i_registry, task_data):
    from mubench.harness import Prepared

    prepared = Prepared(t2i_registry, "t2i_tiny", None, None, task_data("tiny_imagenet"))
    prepared.read()
    task = prepared.task
    assert task.prompts == ["a photo of a goldfish", "a photo of a European fire salamander", "a photo of a bullfrog",
                            "a photo of a tailed frog"]
    assert task.imagenet_index.tolist() == [1, 25, 30, 32]  # ImageNet-1k's indices of those synsets
    table = (REPO / "tasks" / "tiny_imagenet" / "classes.tsv").read_text().splitlines()
    rows = [line.split("\t") for line in table if not line.startswith("#")][1:]
    assert len(rows) == 200 and len({r[0] for r in rows}) == 200 and all(re.fullmatch(r"n\d{8}", r[0]) for r in rows)
    assert all(0 <= int(r[1]) < 1000 for r in rows) and len({r[1] for r in rows}) == 200


class ColourClip(nn.Module):
    """A stand-in CLIP with known answers: an image's feature is its mean colour, a prompt's its colour word."""

    WORDS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0], "antired": [-1.0, 0.0, 0.0]}

    def __init__(self):
        super().__init__()
        self.visual = type("Visual", (), {"preprocess_cfg": {"size": 8, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}})()

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3))

    def encode_text(self, tokens):
        return tokens


def colour_tokens(prompts):
    return torch.tensor([ColourClip.WORDS[p] for p in prompts])


def test_clip_score_is_100_times_the_clipped_cosine():
    red, green = torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16)
    red[:, 0], green[:, 1] = 1.0, 1.0
    images = torch.cat([red, red, green, red])
    scores = clip_scores(ColourClip(), colour_tokens, images, ["red", "green", "green", "antired"])
    assert scores.tolist() == pytest.approx([100.0, 0.0, 100.0, 0.0])  # matching prompts score 100, orthogonal 0, opposite clipped
    mixed = torch.zeros(1, 3, 16, 16)
    mixed[:, 0], mixed[:, 1] = 1.0, 1.0
    assert clip_scores(ColourClip(), colour_tokens, mixed, ["red"]).item() == pytest.approx(100 / np.sqrt(2))


class Oracle(nn.Module):
    """A classifier whose logits put each image's class (its first pixel, as an index) first and a chosen one fifth."""

    def forward(self, x):
        targets = x[:, 0, 0, 0].long()
        logits = torch.zeros(len(x), 1000)
        logits[torch.arange(len(x)), targets] = 10.0
        logits[:, 999] = torch.where(targets == 999, 10.0, 6.0)
        return logits


def test_classifier_accuracy_has_known_answers():
    images = torch.zeros(3, 3, 4, 4)
    images[:, 0, 0, 0] = torch.tensor([7.0, 42.0, 999.0])
    top1, top5 = classifier_hits(Oracle(), lambda x: x, images, torch.tensor([7, 42, 999]))
    assert top1.tolist() == [1.0, 1.0, 1.0] and top5.tolist() == [1.0, 1.0, 1.0]  # right on every image: 1.0
    top1, top5 = classifier_hits(Oracle(), lambda x: x, images, torch.tensor([999, 0, 5]))
    assert top1.tolist() == [0.0, 0.0, 0.0] and top5.tolist() == [1.0, 0.0, 0.0]  # 999 is second for the first image


def test_cli_runs_text_to_image_offline(cards, task_data, cli, tmp_path):
    done = cli("run", "--task", "t2i_classes_tiny", "--method", "salun", "--include-path", cards, "--data-dir",
               task_data("tiny_imagenet"), "--output-path", tmp_path, "--precision", "fp32")
    assert done.returncode == 0, done.stderr
    [path] = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert {"forget_clip_score", "forget_clf_acc", "test_clf_acc", "retain_clip_score"} <= set(result["results"]["unlearned"])
    assert cli("validate", path, "--include-path", cards, "--data-dir", task_data("tiny_imagenet")).returncode == 0
    assert "forget_clip_score" in done.stdout and "clf_acc" in done.stdout


def test_esd_fidelity(t2i_registry, task_data):
    """ESD against its authors' ``train-esd.py``: x_t by DDIM under the concept's prompt (start guidance) for t_enc steps,
    t in [t_enc/S·1000, (t_enc+1)/S·1000), then MSE(ε_θ(x_t, c), ε₀(x_t) − η(ε₀(x_t, c) − ε₀(x_t))), a step on every UNet
    weight but cross-attention, the time embedding and the output layer; written here with diffusers' DDIM scheduler and
    the UNet called directly, on the same draws."""
    import copy

    from mubench.api import Context
    from mubench.data import Batch
    from mubench.harness import Prepared
    from mubench.loop import objective_optimizer

    prepared = Prepared(t2i_registry, "t2i_classes_tiny", None, None, task_data("tiny_imagenet"), original="pretrained")
    prepared.load()
    cpu = torch.device("cpu")
    model = prepared.family.build()
    ctx = Context(prepared.task, model, prepared.data(cpu), cpu, "fp32", prepared.family.build, torch.Generator().manual_seed(3))
    esd = t2i_registry.method("esd")
    # The step is compared under SGD: Adam's first step divides each gradient by its own size, so gradients that agree to
    # 1e-6 but are themselves about 1e-8 (as some of a random tiny UNet's are) step apart by up to lr.
    method = esd(ctx, esd.resolve_args(prepared.card, {"ddim_steps": 5, "negative_guidance": 1.5, "lr": 1e-3, "optimizer": "sgd",
                                                        "momentum": 0.0}))
    method.setup()
    twin, original = copy.deepcopy(model), copy.deepcopy(model)  # the authors' model and model_orig
    batch = Batch({"latents": prepared.train.tensors["latents"][:2], "labels": torch.tensor([2, 2]), "index": torch.tensor([0, 1])},
                  torch.tensor([True, True]))
    optimizer, _ = objective_optimizer(method, [p for p in model.parameters() if p.requires_grad])
    ours = method.loss(batch, "forget")
    ours.backward()
    ours_grads = [p.grad.clone() for p in model.unet.parameters() if p.requires_grad]
    optimizer.step()

    generator = torch.Generator().manual_seed(3)  # the same draws, in the same order
    steps, eta, start_guidance, prompt = 5, 1.5, 3.0, ["a photo of a bullfrog"] * 2
    t_enc = int(torch.randint(steps, (), generator=generator))
    t = torch.randint(round(t_enc / steps * 1000), round((t_enc + 1) / steps * 1000), (2,), generator=generator)
    noise = torch.randn((2, 4, 8, 8), generator=generator)

    def emb(prompts):
        ids = twin.tokenizer(prompts, padding="max_length", max_length=twin.tokenizer.model_max_length, truncation=True,
                             return_tensors="pt").input_ids
        return twin.text_encoder(ids)[0]

    scheduler = copy.deepcopy(twin.sampler)
    scheduler.set_timesteps(steps)
    with torch.no_grad():
        z = noise * scheduler.init_noise_sigma
        for step in scheduler.timesteps[:t_enc]:
            e_u = twin.unet(z, step, encoder_hidden_states=emb([""] * 2)).sample
            e_c = twin.unet(z, step, encoder_hidden_states=emb(prompt)).sample
            z = scheduler.step(e_u + start_guidance * (e_c - e_u), step, z).prev_sample
        e_0 = original.unet(z, t, encoder_hidden_states=emb([""] * 2)).sample
        e_p = original.unet(z, t, encoder_hidden_states=emb(prompt)).sample
    theirs = F.mse_loss(twin.unet(z, t, encoder_hidden_states=emb(prompt)).sample, e_0 - eta * (e_p - e_0))
    assert t_enc > 0 and torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5), (t_enc, ours, theirs)

    parameters = [p for name, p in twin.unet.named_parameters()
                  if not (name.startswith(("conv_out", "conv_norm_out", "time_embedding")) or "attn2" in name)]
    assert len(parameters) == len(ours_grads) < len(list(twin.unet.parameters()))
    theirs_grads = torch.autograd.grad(theirs, parameters)
    for a, b in zip(ours_grads, theirs_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4), (a - b).abs().max()
    for p, g in zip(parameters, theirs_grads):
        p.grad = g
    torch.optim.SGD(parameters, lr=1e-3).step()
    for a, b in zip(model.unet.parameters(), twin.unet.parameters()):
        assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_frechet_distance_has_known_answers():
    from mubench.metrics import frechet_distance

    a = np.random.default_rng(0).normal(size=(400, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 3.0) == pytest.approx(27.0, rel=1e-6)  # ‖3·1‖² over three dimensions, same covariance
    covariance = np.cov(a, rowvar=False)
    assert frechet_distance(a, 2 * a) == pytest.approx(np.sum(a.mean(0) ** 2) + np.trace(covariance), rel=1e-6)
    assert np.isnan(frechet_distance(a[:1], a))


def test_the_cards_clip_model_loads_from_the_hub_by_its_pretrained_tag(t2i_registry):
    """The real card's CLIP (ViT-B-32, ``laion2b_s34b_b79k``) resolves through open_clip's tag to its hub repo: random
    weights published at ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K`` are the ones loaded."""
    import open_clip
    import safetensors.torch
    from fixtures.hub import snapshot


    with torch.random.fork_rng():
        torch.manual_seed(3)
        published = open_clip.create_model("ViT-B-32", pretrained=None)
    weights = {k: v.to(torch.float16).contiguous() for k, v in published.state_dict().items()}
    safetensors.torch.save_file(weights, snapshot("laion/CLIP-ViT-B-32-laion2B-s34B-b79K") / "open_clip_model.safetensors")
    card = t2i_registry.card("tiny_imagenet")
    task = t2i_registry.task_type(card)
    assert task.settings["clip"] == {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    model, tokenizer = task.clip(torch.device("cpu"))
    loaded = model.state_dict()["visual.conv1.weight"]
    assert torch.equal(loaded, weights["visual.conv1.weight"].float())
    assert tokenizer(["a photo of a goldfish"]).shape == (1, 77)
