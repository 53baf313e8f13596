"""The original model θ₀: from the card's checkpoint, the local cache, or trained here.

Checkpoints are safetensors files with a JSON sidecar (``model.json``); nothing is
ever unpickled. A θ₀ trained here is a verified cache entry (:mod:`mubench.cache`):
trained once under a lock, committed with its sidecar as one unit, and checked
against its sidecar's identity and SHA-256 on every load.
"""
from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from mubench import __version__
from mubench.api.method import Context, Fit
from mubench.cache import CacheEntry
from mubench.data import UnlearningData
from mubench.errors import UserError
from mubench.evaluation import Evaluator
from mubench.files import mubench_home, read_json, sha256_file
from mubench.results import finite

log = logging.getLogger("mubench")

WEIGHTS, SIDECAR = "model.safetensors", "model.json"


@dataclass
class Family:
    """A model family of a card, able to build a fresh randomly initialised model."""

    name: str
    spec: dict
    architecture: Callable[..., torch.nn.Module]
    task: object

    def build(self) -> torch.nn.Module:
        return self.architecture(self.task, **self.spec.get("params", {}))

    def load_published(self, source: str) -> torch.nn.Module | None:
        """A published fine-tuned model in its architecture's own format, if the architecture reads one."""
        load = getattr(self.architecture, "load_original", None)
        return load(self.task, source, **self.spec.get("params", {})) if load else None

    def skeleton(self) -> torch.nn.Module:
        """The family's model for this task without its weights (on the meta device): its structure and size."""
        build = getattr(self.architecture, "skeleton", None)
        if build is not None:
            return build(self.task, **self.spec.get("params", {}))
        with torch.device("meta"):
            return self.build()


@dataclass
class Original:
    """The loaded original model, the sidecar that describes it and where it came from."""

    model: torch.nn.Module
    sidecar: dict
    source: str
    fingerprint: str  # names these weights: a hash of them (or of their manifest), or the hub id they come from
    weights_sha256: str | None = None  # the SHA-256 of the weights file (None for a hub model): the same bits, the same θ₀


def original_entry(card, family: Family, data_sha256: str, fix: str) -> CacheEntry:
    """The cache entry of a θ₀ trained here, keyed by everything it depends on.

    Its identity: the task, the model family and its spec, the card's dataset and
    ``train`` sections, the training data's fingerprint, the original seed and the
    mubench version; the folder name is a hash of it.
    """
    identity = {"task": card.name, "model": family.name, "spec": family.spec, "dataset": card.dataset,
                "recipe": card.data["train"], "data_sha256": data_sha256,
                "original_seed": int(card.data["train"].get("seed", 0)), "mubench_version": __version__}
    return CacheEntry.under(mubench_home() / "originals" / card.name / family.name, identity,
                            f"cached original model of {card.name}/{family.name}", fix, manifest=SIDECAR)


def load_checkpoint(model: torch.nn.Module, weights: Path, family: Family) -> dict:
    """Load ``weights`` into ``model``; returns the sidecar beside it (empty if none).

    A sidecar that records the weights' SHA-256 is checked against the file first.
    """
    path = weights.with_name(SIDECAR)
    sidecar = read_json(path, "checkpoint sidecar") if path.is_file() else {}
    recorded = recorded_sha256(sidecar, weights.name)
    if recorded is not None and sha256_file(weights) != recorded:
        raise UserError(f"checkpoint {weights} does not match the SHA-256 in its sidecar {SIDECAR} (edited or corrupted)")
    load_weights(model, weights, family)
    return sidecar


def recorded_sha256(sidecar: dict, name: str) -> str | None:
    """The SHA-256 a sidecar records for its file ``name``, if any."""
    return sidecar.get("files", {}).get(name) if isinstance(sidecar.get("files"), dict) else None


def load_weights(model: torch.nn.Module, weights: Path, family: Family) -> None:
    """Load a safetensors file, already verified, into ``model``; one line where it does not fit."""
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights), strict=False)
    except (OSError, safetensors.SafetensorError, RuntimeError) as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise UserError(f"checkpoint {weights} cannot be loaded into model '{family.name}': {detail}") from None
    if missing or unexpected:
        raise UserError(f"checkpoint {weights} does not fit model '{family.name}': "
                        f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def checkpoint_file(source: str) -> Path:
    """A local checkpoint (file or folder) or a hub repo holding ``model.safetensors``."""
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / WEIGHTS
    if path.is_file():
        return path
    if path.suffix == ".safetensors" or source.startswith((".", "/", "~")):
        raise UserError(f"original checkpoint {source} not found")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        weights = Path(hf_hub_download(source, WEIGHTS))
        try:
            hf_hub_download(source, SIDECAR)
        except (HfHubHTTPError, LocalEntryNotFoundError):
            log.info("hub checkpoint %s has no %s", source, SIDECAR)
        return weights
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as e:
        raise UserError(f"original checkpoint '{source}' cannot be fetched from the hub: {str(e).splitlines()[0]}") from None


def train_original(card, family: Family, train, test, evaluator: Evaluator) -> tuple[torch.nn.Module, dict]:
    """Train θ₀ on the whole training split with the card's ``train`` recipe.

    The card's per-split metrics on the training split (capped at ``eval.max_retain``)
    and the test split are recorded before and after, so that what unlearning should
    remove was demonstrably learned.
    """
    device, precision = evaluator.device, evaluator.precision
    seed = int(card.data["train"].get("seed", 0))
    torch.manual_seed(seed)
    model = family.build().to(device)
    data = UnlearningData(family.task, train, test, forget=np.array([], dtype=np.int64), seed=seed, device=device)
    _, before = evaluator.evaluate(model, data, ("train", "test"))
    ctx = Context(family.task, model, data, device, precision, family.build, torch.Generator().manual_seed(seed))
    fit = Fit(ctx, Fit.resolve_args(card))
    report = fit.unlearn()
    _, metrics = evaluator.evaluate(model, data, ("train", "test"))
    return model, {"train_seconds": report.seconds, "train_steps": report.steps, "train_seed": seed,
                   "metrics_before": finite(before), "metrics": finite(metrics)}


def resolve_original(card, family: Family, train, test, data_sha256: str, evaluator: Evaluator,
                     retrain_cache: bool = False, fix: str = "rebuild it with `mubench train --force`") -> Original:
    """θ₀ in the order: the card's checkpoint (or ``pretrained``: the family's model as built), the local cache,
    training it here (then cached); on the evaluator's device.

    A cached θ₀ is verified (identity and weights hash) before use; ``fix`` is what the
    error says to do when it fails. ``retrain_cache`` trains and replaces it regardless.
    """
    device = evaluator.device
    source = family.spec["original"]
    if source == "pretrained":  # the family's pretrained model itself, as MU-Bench takes Stable Diffusion v1.4
        name = f"pretrained {family.spec.get('params', {}).get('pretrained', family.name)}"
        return Original(family.build().to(device), {}, name, name)
    if source != "train":
        published = family.load_published(source)
        if published is not None:
            return Original(published.to(device), {}, source, source)
        model = family.build()
        weights = checkpoint_file(source)
        sidecar = load_checkpoint(model, weights, family)
        digest = recorded_sha256(sidecar, weights.name) or sha256_file(weights)
        return Original(model.to(device), sidecar, source, digest, digest)
    entry = original_entry(card, family, data_sha256, fix)
    with entry.locked():
        sidecar = None if retrain_cache else entry.read()
        if sidecar is not None:
            log.info("original model: cached at %s", entry.folder)
            model = family.build()
            load_weights(model, entry.folder / WEIGHTS, family)  # entry.read() hashed them
            return Original(model.to(device), sidecar, str(entry.folder), sidecar["manifest_sha256"], recorded_sha256(sidecar, WEIGHTS))
        log.info("original model: training %s on %s (%d examples)", family.name, card.name, len(train))
        start = time.perf_counter()
        model, stats = train_original(card, family, train, test, evaluator)
        description = {
            "task": card.name,
            "model": family.name,
            "architecture": family.spec["architecture"],
            "params": family.spec.get("params", {}),
            "card_sha256": card.sha256,
            "data_sha256": data_sha256,
            "recipe": card.data["train"],
            "n_train": len(train),
            "device": device.type,
            "mubench_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **stats,
        }
        sidecar = entry.commit(lambda folder: safetensors.torch.save_model(model, str(folder / WEIGHTS)) or description)
    log.info("original model: trained in %.1fs, cached at %s", time.perf_counter() - start, entry.folder)
    return Original(model, sidecar, str(entry.folder), sidecar["manifest_sha256"], recorded_sha256(sidecar, WEIGHTS))
