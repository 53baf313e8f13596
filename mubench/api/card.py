"""Task cards: YAML files that name a task's data, models, metrics and recipes."""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from mubench.errors import UserError, key_path, unknown_name


@cache
def schema(name: str) -> dict:
    """A JSON Schema shipped in ``mubench/schemas`` (``task_card``, ``result`` or ``leaderboard``)."""
    return json.loads(resources.files("mubench.schemas").joinpath(f"{name}.schema.json").read_text())


@cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(name))


def schema_errors(instance, name: str, source) -> None:
    """Raise a one-line :class:`UserError` naming ``source``, the key and what was expected."""
    error = jsonschema.exceptions.best_match(validator(name).iter_errors(instance))
    if error is not None:
        raise UserError(f"{source}: {key_path(error.absolute_path)}: {error.message}")


MAX_CARD_BYTES = 2**20


class CardLoader(yaml.SafeLoader):
    """Safe YAML without anchors and aliases: a card is a plain tree, so no alias bomb can expand it."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(None, None, "anchors and aliases (& and *) are not allowed in a task card",
                                              event.start_mark)
        return super().compose_node(parent, index)


@lru_cache(maxsize=256)
def parsed(text: str):
    """The YAML ``text`` parsed (kept per text: validating a thousand results reads their cards a thousand times)."""
    return yaml.load(text, Loader=CardLoader)


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping (at most 1 MiB, no anchors or aliases); every problem is a one-line user error."""
    try:
        if path.stat().st_size > MAX_CARD_BYTES:
            raise UserError(f"{path}: larger than {MAX_CARD_BYTES} bytes; a task card is a few KB")
        data = copy.deepcopy(parsed(path.read_bytes().decode("utf-8")))
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level: expected a mapping of keys, got {type(data).__name__}")
    return data


def merge(base: dict, override: dict) -> dict:
    """Deep-merge two card mappings; ``override`` wins, nested mappings merge key by key."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_includes(path: Path, roots=(), seen: tuple = ()) -> dict:
    """A card's mapping with its ``include:`` chain merged in.

    An include is a path relative to the card that stays inside the card's folder, or
    a file under one of ``roots`` (the include paths the user gave); anything else
    (an absolute path, ``../`` out of the folder) is refused.
    """
    path = path.resolve()
    if path in seen:
        raise UserError(f"{path}: key 'include': include cycle through {' -> '.join(p.name for p in seen)}")
    data = read_yaml(path)
    base = data.pop("include", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"{path}: key 'include': expected a path to a base card, got {base!r}")
    base_path = (path.parent / base).resolve()
    allowed = [path.parent] + [Path(root).resolve() for root in roots]
    if not any(base_path.is_relative_to(root) for root in allowed):
        raise UserError(f"{path}: key 'include': {base} lies outside the card's folder, "
                        f"every --include-path and every plugin's card folder")
    if not base_path.is_file():
        raise UserError(f"{path}: key 'include': no such file {base_path}")
    return merge(resolve_includes(base_path, roots, seen + (path,)), data)


@dataclass(frozen=True)
class TaskCard:
    """A validated task card. ``data`` is the merged mapping; ``sha256`` hashes it canonically."""

    path: Path
    data: dict = field(repr=False)

    @property
    def name(self) -> str:
        return self.data["task"]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.data, sort_keys=True).encode()).hexdigest()

    @property
    def task_type(self) -> str:
        return self.data["task_type"]

    @property
    def dataset(self) -> dict:
        return self.data["dataset"]

    @property
    def columns(self) -> dict:
        return self.data["dataset"].get("columns", {})

    @property
    def models(self) -> dict:
        return self.data["models"]

    @property
    def default_model(self) -> str:
        return self.data.get("default_model") or next(iter(self.models))

    def model(self, name: str | None) -> tuple[str, dict]:
        """The model family ``name`` (the card's default if None) and its spec."""
        name = name or self.default_model
        if name not in self.models:
            raise unknown_name(f"model for task '{self.name}'", name, self.models)
        return name, self.models[name]

    @property
    def ratios(self) -> list[float]:
        return self.data["deletion"]["ratios"]

    @property
    def default_ratio(self) -> float:
        return self.data["deletion"].get("default_ratio", self.ratios[0])

    @property
    def split_seed(self) -> int:
        return self.data["deletion"]["split_seed"]

    @property
    def seeds(self) -> list[int]:
        return self.data.get("seeds", [0])

    @property
    def eval(self) -> dict:
        return self.data.get("eval", {})

    def with_seeds(self, split_seed: int | None = None, original_seed: int | None = None) -> TaskCard:
        """The card with another deletion set (``deletion.split_seed``) or another θ₀ seed (``train.seed``)."""
        overrides = {}
        if split_seed is not None:
            overrides["deletion"] = {"split_seed": split_seed}
        if original_seed is not None:
            overrides["train"] = {"seed": original_seed}
        return TaskCard(self.path, merge(self.data, overrides)) if overrides else self


def structure_problems(data: dict, source) -> list[str]:
    """Every problem of a merged card's mapping that needs no plugin to see: its schema, then what the schema cannot
    say (one source of data, a default model and ratio among the card's own); one line each, naming ``source`` and the key."""
    errors = sorted(validator("task_card").iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [f"{source}: {key_path(error.absolute_path)}: {error.message}" for error in errors]
    dataset, deletion = data.get("dataset"), data.get("deletion")
    if isinstance(dataset, dict):
        if "loader" in dataset and "path" in dataset:
            problems.append(f"{source}: key 'dataset': expected one of 'loader' (a registered source) "
                            f"or 'path' (Hugging Face datasets), not both")
        if not {"loader", "path", "download"} & set(dataset):
            problems.append(f"{source}: key 'dataset': expected 'loader', 'path', or 'download' (how to get data that no hub serves)")
    models = data.get("models")
    if "default_model" in data and isinstance(models, dict) and data["default_model"] not in models:
        problems.append(f"{source}: key 'default_model': expected one of the card's models "
                        f"({', '.join(models)}), got '{data['default_model']}'")
    if isinstance(deletion, dict) and "default_ratio" in deletion and deletion["default_ratio"] not in (deletion.get("ratios") or []):
        problems.append(f"{source}: key 'deletion.default_ratio': expected one of deletion.ratios, got {deletion['default_ratio']}")
    return problems


def load_card(path: str | Path, roots=()) -> TaskCard:
    """Read, merge and validate a task card; any problem is one line naming file and key (the first, and how many
    more there are: :func:`structure_problems` lists them all).

    ``roots`` are the folders (the user's include paths, the plugins' card folders)
    under which ``include:`` may reach besides the card's own folder.
    """
    path = Path(path)
    data = resolve_includes(path, roots)
    refuse(structure_problems(data, path), path)
    return TaskCard(path=path, data=data)


def refuse(problems: list[str], path) -> None:
    """Raise the first of a card's ``problems`` as one line that says how many more there are, if any."""
    if problems:
        raise UserError(problems[0] + (f" (and {len(problems) - 1} more: `mubench validate {path}` lists them)"
                                       if len(problems) > 1 else ""))
