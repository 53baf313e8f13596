"""The real datasets path: a card whose source is a dataset on disk in the Hugging Face schema."""
import datasets
import numpy as np
import pytest
import yaml
from tests_support import digits_card_dict

from mubench.api.card import load_card
from mubench.data import fingerprint, load_splits
from mubench.errors import UserError


@pytest.fixture(scope="module")
def saved_digits(tmp_path_factory, registry):
    """The digits splits written with ``save_to_disk`` under the split names of a hub dataset."""
    card = registry.card("digits")
    splits = load_splits(card, registry.dataset_loaders)
    folder = tmp_path_factory.mktemp("hf") / "digits"
    datasets.DatasetDict({"training": splits["train"], "validation": splits["test"]}).save_to_disk(str(folder))
    return folder, splits


def hf_card(tmp_path, folder, **dataset):
    card = digits_card_dict()
    card.update(task="digits_hf")
    card["dataset"] = {"path": str(folder), "splits": {"train": "training", "test": "validation"},
                       "columns": {"image": "image", "label": "label"}, **dataset}
    path = tmp_path / "digits_hf.yaml"
    path.write_text(yaml.safe_dump(card))
    return load_card(path)


def test_a_saved_dataset_loads_through_the_card(tmp_path, saved_digits, registry):
    folder, splits = saved_digits
    loaded = load_splits(hf_card(tmp_path, folder), registry.dataset_loaders)
    assert set(loaded) == {"train", "test"}
    assert loaded["train"].features == splits["train"].features
    assert np.array_equal(np.asarray(loaded["train"]["label"]), np.asarray(splits["train"]["label"]))
    assert fingerprint(loaded["train"]) == fingerprint(splits["train"])  # same content, same hash


def test_parquet_files_load_through_datasets(tmp_path, saved_digits, registry):
    _, splits = saved_digits
    data = tmp_path / "parquet"
    data.mkdir()
    splits["train"].to_parquet(str(data / "train.parquet"))
    splits["test"].to_parquet(str(data / "test.parquet"))
    card = hf_card(tmp_path, "parquet", data_dir=str(data))
    card.data["dataset"]["splits"] = {"train": "train", "test": "test"}
    loaded = load_splits(card, registry.dataset_loaders)
    assert len(loaded["train"]) == len(splits["train"]) and len(loaded["test"]) == len(splits["test"])


def test_missing_split_or_column_is_one_line(tmp_path, saved_digits, registry):
    folder, _ = saved_digits
    card = hf_card(tmp_path, folder)
    card.data["dataset"]["splits"] = {"train": "train", "test": "validation"}
    with pytest.raises(UserError, match="dataset has no split 'train' \\(it has: training, validation\\)"):
        load_splits(card, registry.dataset_loaders)
    card = hf_card(tmp_path, folder, columns={"image": "img", "label": "label"})
    with pytest.raises(UserError, match="lacks column\\(s\\) img"):
        load_splits(card, registry.dataset_loaders)


def test_unreachable_hub_dataset_is_one_line(tmp_path, registry):
    card = hf_card(tmp_path, "someone/not-a-dataset-here")
    with pytest.raises(UserError, match="cannot load dataset 'someone/not-a-dataset-here'"):
        load_splits(card, registry.dataset_loaders)


def test_the_harness_runs_on_the_saved_dataset(tmp_path, saved_digits, cli):
    folder, _ = saved_digits
    cards = tmp_path / "cards"
    cards.mkdir()
    hf_card(cards, folder)
    done = cli("run", "--task", "digits_hf", "--method", "randlabel", "--include-path", cards, "--output-path", tmp_path / "out")
    assert done.returncode == 0, done.stderr


def test_two_selections_of_one_table_hash_apart(saved_digits):
    """An adapter may leave an indices mapping (Speech Commands' cut silence does): the hash must see it."""
    _, splits = saved_digits
    train = splits["train"]
    evens, odds = train.select(range(0, 20, 2)), train.select(range(1, 21, 2))  # not slices: indices mappings
    assert evens._indices is not None and fingerprint(evens) != fingerprint(odds)
    assert fingerprint(evens) == fingerprint(train.select(range(0, 20, 2)))
