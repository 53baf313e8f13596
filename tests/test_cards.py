"""Task cards: schema validation with errors that name the file, the key and what was expected."""
from pathlib import Path

import pytest
import yaml

from mubench.api.card import load_card
from mubench.errors import UserError

DIGITS = Path(__file__).resolve().parents[1] / "tasks" / "digits" / "digits.yaml"


def digits_card() -> dict:
    return yaml.safe_load(DIGITS.read_text())


def write(folder: Path, name: str, data) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(UserError) as info:
        load_card(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_builtin_card_loads_with_a_stable_hash():
    card = load_card(DIGITS)
    assert card.name == "digits" and card.task_type == "image_classification"
    assert card.ratios == [r / 100 for r in range(1, 11)]
    assert card.sha256 == load_card(DIGITS).sha256 and len(card.sha256) == 64


def test_include_merges_a_base_card(tmp_path):
    base = digits_card()
    base.pop("task")
    write(tmp_path, "base.yaml", base)
    card = load_card(write(tmp_path, "child.yaml", {"include": "base.yaml", "task": "digits_small", "train": {"epochs": 2}}))
    assert card.name == "digits_small"
    assert card.data["train"]["epochs"] == 2
    assert card.data["train"]["lr"] == base["train"]["lr"]  # nested mappings merge key by key


@pytest.mark.parametrize("mutate, key, expected", [
    (lambda c: c.pop("models"), "top level", "'models' is a required property"),
    (lambda c: c["deletion"].update(ratios=[0.05, "ten"]), "key 'deletion.ratios[1]'", "'ten' is not of type 'number'"),
    (lambda c: c["deletion"].update(ratios=[0.05, 1.5]), "key 'deletion.ratios[1]'", "1.5 is greater than or equal to the maximum of 1"),
    (lambda c: c.update(modality="smell"), "key 'modality'", "'smell' is not one of"),
    (lambda c: c.update(colour="blue"), "top level", "'colour' was unexpected"),
    (lambda c: c["models"]["cnn"].pop("original"), "key 'models.cnn'", "'original' is a required property"),
    (lambda c: c["dataset"].update(path="some/dataset"), "key 'dataset'", "not both"),
    (lambda c: c.update(default_model="vit"), "key 'default_model'", "expected one of the card's models"),
    (lambda c: c["deletion"].update(default_ratio=0.5), "key 'deletion.default_ratio'", "expected one of deletion.ratios"),
])
def test_errors_name_file_key_and_expectation(tmp_path, mutate, key, expected):
    card = digits_card()
    mutate(card)
    message = error_of(write(tmp_path, "bad.yaml", card))
    assert key in message and expected in message


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = error_of(write(tmp_path, "broken.yaml", "task: digits\nmodels: [unclosed\n"))
    assert "not valid YAML" in message and "line" in message


def test_a_card_that_is_not_a_mapping(tmp_path):
    assert "expected a mapping" in error_of(write(tmp_path, "list.yaml", "- a\n- b\n"))


def test_include_cycle_and_missing_base(tmp_path):
    write(tmp_path, "a.yaml", {"include": "b.yaml", "task": "a"})
    write(tmp_path, "b.yaml", {"include": "a.yaml"})
    assert "include cycle" in error_of(tmp_path / "a.yaml")
    assert "no such file" in error_of(write(tmp_path, "c.yaml", {"include": "missing.yaml", "task": "c"}))


def alias_bomb(levels: int) -> str:
    """A card whose nested aliases expand to 9**levels strings (1.7 KB at 8 levels)."""
    lines = ["task: bomb", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_anchors_and_aliases_are_refused_before_they_expand(tmp_path):
    message = error_of(write(tmp_path, "bomb.yaml", alias_bomb(8)))
    assert "anchors and aliases (& and *) are not allowed in a task card" in message and "line 2" in message
    single = digits_card()
    text = yaml.safe_dump(single).replace("seed: 0", "seed: &s 0", 1)
    assert "anchors and aliases" in error_of(write(tmp_path, "anchor.yaml", text))


def test_an_alias_bomb_in_an_include_path_leaves_the_other_tasks_working(tmp_path, cli):
    write(tmp_path, "bomb.yaml", alias_bomb(8))
    listed = cli("list", "tasks", "--include-path", tmp_path, timeout=120)
    assert listed.returncode == 0 and "digits " in listed.stdout and "bomb" not in listed.stdout
    [warning] = listed.stderr.strip().splitlines()
    assert "task card left out" in warning and "bomb.yaml" in warning and "anchors and aliases" in warning
    checked = cli("validate", tmp_path / "bomb.yaml", timeout=120)
    assert checked.returncode == 2 and len(checked.stderr.strip().splitlines()) == 1 and "anchors and aliases" in checked.stderr


def test_oversized_and_non_utf8_cards(tmp_path):
    assert "larger than 1048576 bytes" in error_of(write(tmp_path, "big.yaml", "task: big\n# " + "x" * 2**20 + "\n"))
    (tmp_path / "latin.yaml").write_bytes(b"task: caf\xe9\n")
    assert "not UTF-8 text" in error_of(tmp_path / "latin.yaml")


def test_includes_stay_inside_the_cards_folder_or_an_include_path(tmp_path):
    cards, shared = tmp_path / "cards", tmp_path / "shared"
    cards.mkdir(), shared.mkdir()
    write(shared, "base.yaml", {k: v for k, v in digits_card().items() if k != "task"})
    escaping = write(cards, "up.yaml", {"include": "../shared/base.yaml", "task": "up"})
    absolute = write(cards, "abs.yaml", {"include": str(shared / "base.yaml"), "task": "abs"})
    system = write(cards, "sys.yaml", {"include": "/etc/passwd", "task": "sys"})
    for path, given in ((escaping, "../shared/base.yaml"), (absolute, str(shared / "base.yaml")), (system, "/etc/passwd")):
        message = error_of(path)
        assert f"key 'include': {given} lies outside the card's folder, every --include-path and every plugin's card folder" in message
    assert load_card(escaping, roots=[shared]).name == "up"  # under a folder the user named
    assert load_card(absolute, roots=[shared]).name == "abs"
    write(cards, "base.yaml", {k: v for k, v in digits_card().items() if k != "task"})
    assert load_card(write(cards, "side.yaml", {"include": "./base.yaml", "task": "side"})).name == "side"


def test_a_card_in_an_include_path_may_extend_a_builtin_card(tmp_path):
    from mubench.api.registry import Registry

    builtin = Path(__file__).resolve().parents[1] / "tasks" / "digits" / "digits_classes.yaml"
    write(tmp_path, "mine.yaml", {"include": str(builtin), "task": "digits_mine", "train": {"epochs": 3}})
    card = Registry(include_paths=[tmp_path]).card("digits_mine")
    assert card.data["deletion"]["mode"] == "classes" and card.data["train"]["epochs"] == 3
    with pytest.raises(UserError, match="lies outside the card's folder"):
        load_card(tmp_path / "mine.yaml")  # without the registry's card folders


STRICT_CARD = """include: {base}
task: digits_strict
train: {{epochs: "thirty", lr: -1}}
models:
  cnn: {{architecture: small_cnn, params: {{width: "wide", depth: 3}}, original: train}}
methods:
  scrub: {{msteps: "five", nonsense: 1, lr: "fast"}}
  nomethod: {{lr: 0.1}}
metrics: [acc, accc]
"""


def test_validate_lists_every_problem_of_a_card_and_run_refuses_it_in_one_line(cli, tmp_path):
    card = tmp_path / "strict.yaml"
    card.write_text(STRICT_CARD.format(base=Path(__file__).resolve().parents[1] / "tasks" / "digits" / "digits.yaml"))
    checked = cli("validate", card, "--include-path", tmp_path, "--include-path", Path(__file__).resolve().parents[1] / "tasks")
    lines = checked.stderr.strip().splitlines()
    assert checked.returncode == 2 and checked.stdout == ""
    # one try lists them all: the card's structure, then what the plugins see of the keys whose structure is sound
    # ('methods.scrub.lr' is the schema's alone, not said a second time by the method's argument check)
    assert [line.split("key '")[1].split("'")[0] for line in lines] == [
        "methods.scrub.lr", "train.epochs", "train.lr", "models.cnn.params.width", "models.cnn.params.depth", "metrics[1]",
        "methods.scrub.msteps", "methods.scrub.nonsense", "methods.nomethod"]
    assert "'thirty' is not of type 'integer'" in lines[1] and "'fast' is not of type 'number'" in lines[0]
    assert "expected int (as its default 32), got 'wide'" in lines[3] and "Did you mean 'acc'?" in lines[5]
    done = cli("run", "--task", "digits_strict", "--method", "neggrad", "--include-path", tmp_path, "--output-path", tmp_path / "out")
    [line] = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "key 'methods.scrub.lr'" in line and "and 8 more" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("section, key", [
    ("models: [1, 2]", "models"), ("models: {cnn: 7}", "models.cnn"), ("models: {cnn: {architecture: 5}}", "models.cnn.architecture"),
    ("methods: {scrub: 3}", "methods.scrub"), ("dataset: 5", "dataset"), ("metrics: acc", "metrics"), ("task_type: [a]", "task_type")])
def test_a_section_of_the_wrong_shape_is_one_problem_not_a_crash_of_the_plugin_checks(tmp_path, section, key):
    from mubench.api.registry import Registry

    card = write(tmp_path, "shape.yaml", f"include: {DIGITS}\ntask: digits_shape\n{section}\n")
    registry = Registry(include_paths=[tmp_path, DIGITS.parent])
    name, problems = registry.card_problems(card)
    assert name == "digits_shape" and [problem.split("key '")[1].split("'")[0] for problem in problems] == [key]
    with pytest.raises(UserError, match=f"key '{key}'"):
        registry.checked_card("digits_shape")


def test_architecture_parameters_are_checked_by_default_and_annotation():
    from mubench.api.catalog import argument_problems, signature_spec
    from mubench.tasks.architectures import tiny_vit
    from mubench.tasks.pretrained import Pretrained

    vit = signature_spec(tiny_vit)
    assert argument_problems(vit, {"embed_dims": [8, 16], "drop_path_rate": 0, "depths": None}) == []
    [(key, problem)] = argument_problems(vit, {"embed_dims": "wide"})
    assert key == "embed_dims" and "expected list | None" in problem
    assert argument_problems(vit, {"drop_path_rate": True}) == [("drop_path_rate", "expected float (as its default 0.1), got True")]
    assert argument_problems(signature_spec(Pretrained()), {"pretrained": "x", "hidden_dropout_prob": 0.2}) == []  # **params
