"""The MU-Bench discriminative tasks end to end, offline: datasets in the real hub schemas,
tiny randomly initialised models of the real transformers classes at the real repo ids
(tests/fixtures), and the same loading code a user with network runs."""
import json

import numpy as np
import pytest
import torch
import yaml
from fixtures import FIXTURES, images
from tests_support import REPO

CLASSIFIERS = {"cifar100", "imdb", "ddi2013", "nlvr2", "speech_commands", "ucf101"}
LANGUAGE_MODELS = {"samsum", "biofact"}
CONVOLUTIONAL = {"cifar100", "nlvr2"}  # ViT's and ViLT's patch embeddings; HuBERT's and VideoMAE's are 1-D and 3-D
# Where each method must refuse to run (one line, before any data is read); everywhere else it must run.
REFUSES = {"ct": CLASSIFIERS - CONVOLUTIONAL | LANGUAGE_MODELS, "msg": CLASSIFIERS - CONVOLUTIONAL | LANGUAGE_MODELS,
           "cfw": CLASSIFIERS - CONVOLUTIONAL | LANGUAGE_MODELS, "fisher": LANGUAGE_MODELS, "fcs": LANGUAGE_MODELS,
           "prmq": LANGUAGE_MODELS, "kde": LANGUAGE_MODELS, "rni": LANGUAGE_MODELS, "dpo": CLASSIFIERS, "rmu": CLASSIFIERS,
           "esd": CLASSIFIERS | LANGUAGE_MODELS}
METHODS = ["original", "retrain", "neggrad", "ngplus", "l1sparse", "ssd", "randlabel", "badt", "scrub", "salun", "esd", "msg", "ct",
           "cfk", "euk", "fisher", "iu", "fcs", "cfw", "prmq", "kde", "rni", "graddiff", "npo", "simnpo", "dpo", "rmu", "undial", "wga",
           "satimp"]
SPARSE = {"cfk", "euk"}  # they train only the last blocks and the head


def card_models(task) -> dict:
    """A built-in card's model families (read at collection time, before any registry exists)."""
    return yaml.safe_load((REPO / "tasks" / task / f"{task}.yaml").read_text())["models"]


def families(task):
    return [(task, family) for family in card_models(task)]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", FIXTURES)
def test_every_method_runs_on_every_task(task, method, task_data, registry, tmp_path, monkeypatch):
    from mubench.errors import UserError
    from mubench.harness import Prepared, RunConfig, run
    from mubench.results import load_result, validate_result

    data = task_data(task)
    if task in REFUSES.get(method, ()):
        monkeypatch.setattr(Prepared, "read", lambda self: pytest.fail("the data was read before the method refused"))
        with pytest.raises(UserError, match=f"^method '{method}' cannot run on task '{task}': "):
            run(RunConfig(task=task, method=method, data_dir=data, output_path=tmp_path / "out"), registry)
        assert not (tmp_path / "out").exists()
        return
    result, path = run(RunConfig(task=task, method=method, data_dir=data, output_path=tmp_path), registry)
    validate_result(load_result(path), path, registry)
    assert (result["task"], result["method"]) == (task, method)
    trained = result["model_info"]["trainable_fraction"]
    assert result["split"]["n_forget"] >= 1 and (0 < trained < 1 if method in SPARSE else trained == 1.0)
    original, unlearned = result["results"]["original"], result["results"]["unlearned"]
    if method == "original":
        assert unlearned == original and result["unlearning"]["steps"] == 0
    elif registry.method(method).trains:
        assert result["unlearning"]["steps"] > 0
    else:  # an edit of the weights (SSD): no optimiser steps
        assert result["unlearning"]["steps"] == 0 and result["times"]["unlearn_s"] > 0


@pytest.mark.parametrize(("task", "family"), [f for task in FIXTURES for f in families(task)])
def test_every_family_loads_counts_feeds_and_adapts(task, family, task_data, registry):
    """Each family's real class loads from its hub id, is counted without weights, eats a batch, takes LoRA;
    its released original, where the card names one, loads and eats the batch too."""
    from mubench.harness import Prepared
    from mubench.lora import LoraSpec, apply_lora

    prepared = Prepared(registry, task, family, 0.05, task_data(task))
    prepared.load()
    model = prepared.family.build()
    assert sum(p.numel() for p in prepared.family.skeleton().parameters()) == sum(p.numel() for p in model.parameters())
    batch = next(iter(prepared.context(model, 0, torch.device("cpu"), "fp32").data.loader("train", 4)))
    logits = prepared.task.forward(model, batch.inputs)
    if hasattr(prepared.task, "label_names"):
        assert logits.shape == (4, len(prepared.task.label_names))
    else:  # a language model: one distribution over the vocabulary per target token
        assert logits.shape == (*batch.inputs["labels"].shape, model.config.vocab_size)
    adapted, record = apply_lora(model, LoraSpec(fraction=0.5))
    assert 0 < record["trainable_fraction"] <= 0.5 and record["n_adapted"] > 0
    assert prepared.task.forward(adapted, batch.inputs).shape == logits.shape
    source = prepared.family.spec["original"]
    if source != "train":  # a released original loads as its own class and predicts the task's labels
        released = prepared.family.load_published(source)
        assert prepared.task.forward(released, batch.inputs).shape == logits.shape


@pytest.mark.parametrize("task", FIXTURES)
def test_a_second_load_reads_the_preprocessing_cache(task, task_data, registry, monkeypatch):
    from mubench.harness import Prepared

    first = Prepared(registry, task, None, 0.05, task_data(task))
    first.load()

    def no_preprocessing(self, batch):
        raise AssertionError("preprocessed again")

    monkeypatch.setattr(type(first.task), "preprocess", no_preprocessing)
    second = Prepared(registry, task, None, 0.05, task_data(task))
    second.load()
    assert len(second.train) == len(first.train)
    items = second.train.__getitems__([0, 1])
    assert {k: [np.asarray(v).tolist() for v in vs] for k, vs in items.items()} == \
           {k: [np.asarray(v).tolist() for v in vs] for k, vs in first.train.__getitems__([0, 1]).items()}


def test_lora_run_from_the_cli_records_the_trainable_fraction(task_data, cli, tmp_path):
    task_data("ddi2013")
    done = cli("run", "--task", "ddi2013", "--method", "randlabel", "--data-dir", task_data("ddi2013"),
               "--peft", "lora", "--lora-fraction", "0.3", "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(next(tmp_path.glob("*.json")).read_text())
    peft = result["config"]["peft"]
    assert peft["method"] == "lora" and peft["target_modules"] == ["query", "value"]
    assert 0 < peft["trainable_fraction"] <= 0.3 and result["model_info"]["trainable_fraction"] == peft["trainable_fraction"]


def test_lora_needs_a_rank_or_a_fraction_that_fits(task_data, cli, tmp_path):
    done = cli("-q", "run", "--task", "imdb", "--method", "neggrad", "--data-dir", task_data("imdb"),
               "--peft", "lora", "--lora-fraction", "0.0001", "--output-path", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "the smallest LoRA on this model" in done.stderr and not list(tmp_path.glob("*.json"))


def test_list_models_shows_parameter_counts_from_the_configs(task_data, cli):
    task_data("cifar100")
    done = cli("list", "models", "--task", "cifar100")
    assert done.returncode == 0, done.stderr
    rows = {line.split()[1]: line for line in done.stdout.splitlines()[1:]}
    assert set(rows) == {family for _, family in families("cifar100")}
    assert "unknown" not in done.stdout and "google/vit-base-patch16-224" in rows["vit-base"] and "config, cache" in rows["vit-base"]
    # Online, but the hub does not answer: one probe, then the cached configs, not minutes of retries per file.
    unreachable = cli("list", "models", "--task", "cifar100", env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.returncode == 0 and unreachable.stdout == done.stdout
    assert "the hub does not answer" in unreachable.stderr and "Retrying" not in unreachable.stderr


def test_drug_mentions_are_marked_once_each():
    from mubench.tasks.text import RelationClassificationTask, mark

    markers = RelationClassificationTask.markers
    assert mark("aspirin raises warfarin levels", "aspirin", "warfarin", markers) == \
        "<< aspirin >> raises [[ warfarin ]] levels"
    assert mark("the drug and the drug", "drug", "drug", markers) == "the << drug >> and the [[ drug ]]"


def test_labels_outside_the_card_merge_into_its_other_label(registry):
    import datasets

    from mubench.api.card import TaskCard

    card = registry.card("imdb")
    data = card.data | {"dataset": card.dataset | {"labels": ["neg", "other"], "other_label": "other", "num_labels": 2}}
    task = registry.task_types["text_classification"](TaskCard(card.path, data))
    train = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 2]},
                                       features=datasets.Features({"text": datasets.Value("string"),
                                                                   "label": datasets.ClassLabel(names=["neg", "pos", "mixed"])}))
    task.prepare(train)
    assert task.targets([0, 1, 2]).tolist() == [0, 1, 1]


@pytest.mark.parametrize("family", ["vit-base", "resnet-18", "mobilenet-v2"])
def test_cached_uint8_pixels_normalise_to_what_the_processor_gives(family):
    """Resizing is cached as uint8 and normalising deferred to the device; together they are the processor."""
    from PIL import Image

    from mubench.tasks.classification import pixels, resized_uint8

    _, processor = images.tiny_model(card_models("cifar100")[family]["params"]["pretrained"])
    rng = np.random.default_rng(0)
    batch = [Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)) for _ in range(3)]
    expected = processor(batch, return_tensors="pt")["pixel_values"]
    assert torch.allclose(pixels(torch.from_numpy(resized_uint8(processor, batch)), processor), expected, atol=1e-5)


def test_transformers_heads_come_from_the_tasks_model_kwargs():
    """The head takes the label settings a task's model_kwargs() gives, and nothing else; a task with none gets none."""
    from types import SimpleNamespace

    from mubench.tasks.pretrained import head_kwargs, label_space_problem

    labelled = SimpleNamespace(model_kwargs=lambda: {"num_labels": 2, "id2label": {0: "neg", 1: "pos"},
                                                     "label2id": {"neg": 0, "pos": 1}, "in_channels": 3})
    assert head_kwargs(labelled) == {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    assert head_kwargs(SimpleNamespace(model_kwargs=dict)) == {}
    config = SimpleNamespace(num_labels=2, id2label={0: "NEG", 1: "POS"})
    assert label_space_problem(config, head_kwargs(labelled)) is None  # names compare without case
    assert label_space_problem(SimpleNamespace(num_labels=2, id2label={0: "pos", 1: "neg"}), head_kwargs(labelled)) == \
        "its labels are ['pos', 'neg'], the task's are ['neg', 'pos']"
    assert label_space_problem(config, {}) is None  # a generative task's model has no class head to check
