"""The original model: checkpoint, then cache, then trained here; safetensors with a JSON sidecar."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import REPO, digits_card_dict

from mubench import originals
from mubench.errors import UserError
from mubench.harness import Prepared

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cached(digits_prepared):
    """The digits original as cached by the harness (trained once per session)."""
    original = digits_prepared.original(CPU, "fp32")
    return Path(original.source)


def test_the_cache_holds_safetensors_and_a_sidecar(cached, digits_prepared, mubench_home):
    assert cached.is_relative_to(mubench_home / "originals" / "digits" / "cnn")
    sidecar = json.loads((cached / "model.json").read_text())
    assert sidecar["task"] == "digits" and sidecar["model"] == "cnn" and sidecar["train_seed"] == 0
    assert sidecar["data_sha256"] == digits_prepared.data_sha256 and sidecar["n_train"] == 1437
    assert sidecar["metrics"]["test_acc"] > 0.9 and sidecar["train_seconds"] > 0
    assert (cached / "model.safetensors").read_bytes()[:8]  # a safetensors header, not a pickle


def test_a_second_resolution_loads_the_cache(digits_prepared, cached, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached original should have been loaded")

    monkeypatch.setattr(originals, "train_original", no_training)
    first, second = digits_prepared.original(CPU, "fp32"), digits_prepared.original(CPU, "fp32")
    assert Path(second.source) == cached
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)


def checkpoint_card(tmp_path, original: str, **params):
    card = digits_card_dict()
    card["task"] = "digits_ckpt"
    card["models"]["cnn"]["original"] = original
    card["models"]["cnn"]["params"].update(params)
    (tmp_path / "cards").mkdir(exist_ok=True)
    (tmp_path / "cards" / "card.yaml").write_text(yaml.safe_dump(card))
    return tmp_path / "cards"


def prepare_from(registry_cls, cards):
    prepared = Prepared(registry_cls(include_paths=[cards]), "digits_ckpt", None, 0.05)
    prepared.load()
    return prepared


def test_the_cards_checkpoint_comes_first(tmp_path, cached, monkeypatch):
    from mubench.api.registry import Registry

    monkeypatch.setattr(originals, "train_original", lambda *a, **k: pytest.fail("must not train"))
    shutil.copytree(cached, tmp_path / "ckpt")
    prepared = prepare_from(Registry, checkpoint_card(tmp_path, str(tmp_path / "ckpt")))
    original = prepared.original(CPU, "fp32")
    assert original.source == str(tmp_path / "ckpt") and original.sidecar["task"] == "digits"
    file_card = checkpoint_card(tmp_path, str(tmp_path / "ckpt" / "model.safetensors"))
    assert prepare_from(Registry, file_card).original(CPU, "fp32").sidecar["model"] == "cnn"


def test_a_checkpoint_of_another_shape_is_one_line(tmp_path, cached):
    from mubench.api.registry import Registry

    prepared = prepare_from(Registry, checkpoint_card(tmp_path, str(cached), width=16))
    with pytest.raises(UserError, match="cannot be loaded into model 'cnn'") as info:
        prepared.original(CPU, "fp32")
    message = str(info.value)
    assert "\n" not in message and "\t" not in message
    assert "size mismatch for" in message and "copying a param with shape" in message  # the cause, not only its first line


def test_missing_and_unreachable_checkpoints(tmp_path):
    from mubench.api.registry import Registry

    with pytest.raises(UserError, match="original checkpoint ./nowhere/model.safetensors not found"):
        prepare_from(Registry, checkpoint_card(tmp_path, "./nowhere/model.safetensors")).original(CPU, "fp32")
    with pytest.raises(UserError, match="cannot be fetched from the hub"):
        prepare_from(Registry, checkpoint_card(tmp_path, "mubench/digits-cnn")).original(CPU, "fp32")


def test_no_code_unpickles_files():
    sources = [p for folder in ("mubench", "tasks", "methods") for p in (REPO / folder).rglob("*.py")]
    offenders = [str(p) for p in sources if re.search(r"torch\.load\(|pickle\.load", p.read_text())]
    assert offenders == []
