"""Deep Unlearn's datasets (MNIST, Fashion-MNIST, CIFAR-10, UTKFace) on fixtures in their hub schemas, with ResNet-18
and TinyViT trained from scratch."""
import json

import numpy as np
import pytest
import yaml
from fixtures import SCRATCH_FIXTURES
from tests_support import REPO

from mubench.api.registry import Registry
from mubench.errors import UserError
from mubench.harness import RunConfig, run
from mubench.tasks.utkface import age, age_groups

TASKS = sorted(SCRATCH_FIXTURES)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return {task: SCRATCH_FIXTURES[task](tmp_path_factory.mktemp(task) / "data") for task in TASKS}


@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """Each card as shipped but for its models (a ResNet-18 of width 4, a small TinyViT) and one epoch of training."""
    folder = tmp_path_factory.mktemp("deep_unlearn_cards")
    for task in TASKS:
        card = yaml.safe_load((REPO / "tasks" / task / f"{task}.yaml").read_text())
        card["task"] = f"{task}_narrow"
        card["models"]["resnet-18"]["params"] = {"width": 4}
        card["models"]["tiny-vit"]["params"] = {"embed_dims": [8, 16, 16, 16], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
        card["train"] |= {"epochs": 1, "lr_decay_epochs": [], "batch_size": 16}
        card["unlearn"] |= {"epochs": 1, "batch_size": 16}
        (folder / f"{task}.yaml").write_text(yaml.safe_dump(card))
    return folder, Registry([folder])


def test_the_four_deep_unlearn_cards_are_listed(cli):
    done = cli("list", "tasks")
    listed = {line.split()[0]: line for line in done.stdout.splitlines()}
    for task in TASKS:
        assert "image_classification" in listed[task] and "resnet-18, tiny-vit" in listed[task]


@pytest.mark.parametrize("task", TASKS)
def test_the_fixture_in_the_hub_schema_passes_the_cards_checks(task, data, cli):
    done = cli("data", task, "--data-dir", data[task], "--examples", "1")
    assert done.returncode == 0, done.stderr
    assert "mubench: problem" not in done.stderr


@pytest.mark.parametrize("task", TASKS)
def test_resnet18_from_scratch_unlearns_each_dataset(task, data, narrow, tmp_path):
    folder, registry = narrow
    result, _ = run(RunConfig(task=f"{task}_narrow", method="neggrad", data_dir=data[task], output_path=tmp_path,
                              include_paths=[folder]), registry)
    assert result["model_info"]["architecture"] == "resnet18"
    assert result["split"]["n_forget"] == round(0.1 * result["split"]["n_train"])
    assert 0 <= result["results"]["unlearned"]["test_acc"] <= 1


def test_resnet18_has_the_small_image_stem_and_the_tasks_channels(narrow, data):
    from mubench.harness import Prepared

    _, registry = narrow
    prepared = Prepared(registry, "mnist_narrow", "resnet-18", None, data["mnist"])
    prepared.load()
    model = prepared.family.build()
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert model.fc.out_features == 10 and type(model.maxpool).__name__ == "Identity"
    full = Registry().architecture(Registry().card("cifar10"), "resnet18")
    prepared_cifar = Prepared(Registry(), "cifar10", "resnet-18", None, data["cifar10"])
    prepared_cifar.read()
    assert 11.0e6 < sum(p.numel() for p in full(prepared_cifar.task).parameters()) < 11.3e6  # ResNet-18's 11.2M


def test_tiny_vit_trains_at_the_datasets_own_resolution(narrow, data, tmp_path):
    folder, registry = narrow
    result, _ = run(RunConfig(task="mnist_narrow", model="tiny-vit", method="original", data_dir=data["mnist"], output_path=tmp_path,
                              include_paths=[folder]), registry)
    assert result["model_info"]["architecture"] == "tiny_vit"
    full = Registry().architecture(Registry().card("mnist"), "tiny_vit")
    from mubench.harness import Prepared

    prepared = Prepared(Registry(), "mnist", "tiny-vit", None, data["mnist"])
    prepared.read()
    assert 5.0e6 < sum(p.numel() for p in full(prepared.task).parameters()) < 5.2e6  # TinyViT-5M


def test_utkface_ages_fall_into_the_cards_groups(data):
    import datasets

    raw = datasets.load_from_disk(str(data["utkface"]))
    spec = yaml.safe_load((REPO / "tasks" / "utkface" / "utkface.yaml").read_text())["dataset"]
    splits = age_groups(raw, spec)
    names = splits["train"].features["label"].names
    assert names == ["0-19", "20-29", "30-44", "45-59", "60+"]
    assert len(splits["train"]) + len(splits["test"]) == len(raw["train"]) and len(splits["test"]) == 15
    assert np.asarray(splits["train"][0]["image"]).shape == (64, 64, 3)
    # the fixture's 15 ages (each 5 times) hold three per group, every edge among them: 19 | 20, 29 | 30, 44 | 45, 59 | 60
    everyone = np.concatenate([splits["train"]["label"], splits["test"]["label"]])
    assert np.bincount(everyone).tolist() == [15, 15, 15, 15, 15]
    counts = np.bincount(splits["test"]["label"], minlength=5)
    assert counts.min() >= 2  # stratified: every group in the test split
    again = age_groups(raw, spec)
    assert again["test"]["label"] == splits["test"]["label"]  # seeded


def test_a_utkface_key_without_an_age_is_one_line():
    assert age("UTKFace/116_1_0_20170120134639935") == 116
    with pytest.raises(UserError, match="does not start with <age>_"):
        age("UTKFace/unknown.jpg")


def test_the_cards_results_record_the_narrow_family(narrow, data, tmp_path):
    folder, registry = narrow
    result, path = run(RunConfig(task="utkface_narrow", method="original", data_dir=data["utkface"], output_path=tmp_path,
                                 include_paths=[folder]), registry)
    assert json.loads(path.read_text())["split"]["n_test"] == 15
