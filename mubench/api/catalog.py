"""What the plugins give, as plain data: the catalog that ``mubench list`` and the card checks read.

It is made from the live plugins (which imports them, and with them torch, scikit-learn and transformers) and cached
under ``$MUBENCH_HOME/catalog``, keyed by a fingerprint of the installed plugins (entry points, packages and their
versions) and of their files (path, size, modification time), so that listing and validating a card read it instead of
importing every plugin. Any change to a plugin's files, or another plugin installed, makes another fingerprint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import json
import re
from pathlib import Path

import jsonschema

from mubench.errors import key_path, unknown_name

FORMAT = 2  # of the cached catalog files
SOURCE_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".tsv"}
TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": list}


@dataclasses.dataclass
class Catalog:
    """Every name the plugins register, with what listing and card checks need to know of it."""

    card_folders: list[list[str]]  # [folder, plugin]
    packages: dict[str, dict]  # plugin -> {"package", "version"}
    owners: dict[str, dict[str, str]]  # kind -> name -> plugin
    clashes: dict[str, str]  # "<kind> '<name>'" -> the two plugins that both give it (used by neither)
    task_types: list[str]
    loaders: dict[str, dict | None]  # name -> its options_schema
    adapters: list[str]
    architectures: dict[str, dict]  # name -> its signature (see `signature_spec`)
    methods: dict[str, dict]  # name -> summary, taxonomy, defaults
    metrics: dict[str, dict]  # name -> scope, direction, forgotten, needs, description
    warnings: list[str]  # what building it warned of (a plugin left out, a clash), said again when it is read

    def to_json(self) -> dict:
        return {"format": FORMAT} | dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Catalog:
        if data.get("format") != FORMAT:
            raise ValueError("another format")
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls)})


def plain(value):
    """``value`` as JSON keeps it (tuples as lists), or None where JSON cannot (then its type is not checked)."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        return value if json.loads(json.dumps(value)) == value else None
    except (TypeError, ValueError):
        return None


def signature_spec(builder) -> dict:
    """An architecture's keyword parameters (after the task): each one's default (JSON) and annotation (text), and
    whether it takes ``**params`` (``open``)."""
    try:
        parameters = list(inspect.signature(builder, eval_str=False).parameters.values())[1:]
    except (TypeError, ValueError):
        return {"params": {}, "open": True}
    named = {}
    for p in parameters:
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", None)
            named[p.name] = {"default": None if p.default is p.empty else plain(p.default),
                             "annotation": None if p.annotation is p.empty else annotation}
    return {"params": named, "open": any(p.kind is p.VAR_KEYWORD for p in parameters)}


def type_problem(value, default) -> str | None:
    """Why ``value`` cannot stand where ``default`` is the default (an int may stand for a float), or None."""
    expected = type(default)
    if default is None or isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"expected {expected.__name__} (as its default {default!r}), got {value!r}"


def argument_problems(spec: dict, params: dict) -> list[tuple[str, str]]:
    """``(key, problem)`` for each of a card's ``params`` that an architecture of signature ``spec`` (see
    :func:`signature_spec`) does not take, or takes with another type: its default's, or its annotation's where the
    default is None. An architecture that takes ``**params`` accepts any other key."""
    problems = []
    for key, value in params.items():
        if key not in spec["params"]:
            if not spec["open"]:
                problems.append((key, f"not a parameter of this architecture (it takes: {', '.join(spec['params']) or 'none'})"))
            continue
        default, annotation = spec["params"][key]["default"], spec["params"][key]["annotation"]
        if default is not None:
            problem = type_problem(value, default)
        elif annotation and value is not None:
            allowed = [TYPES[word] for word in re.findall(r"[a-z]+", annotation) if word in TYPES]
            problem = None if not allowed or any(type_problem(value, kind()) is None for kind in allowed) else \
                f"expected {annotation}, got {value!r}"
        else:
            problem = None
        if problem:
            problems.append((key, problem))
    return problems


def card_problems(card, catalog: Catalog) -> list[str]:
    """Every problem of a card that only the plugins can see, one line each: a task type, architecture, loader,
    adapter, metric or method that is not registered; ``dataset.options`` against the loader's ``options_schema``;
    ``models.<family>.params`` against the architecture's signature; ``methods.<name>`` against the method's
    hyperparameters. A section whose structure is broken (what the card's schema reports) is passed over."""
    data, source = card.data, card.path
    problems = []

    def known(kind: str, key: str, name, registered) -> bool:
        if not isinstance(name, str):
            return False
        if name in registered:
            return True
        problems.append(f"{source}: key '{key}': {unknown_name(kind, name, registered)}")
        return False

    known("task type", "task_type", data.get("task_type"), catalog.task_types)
    dataset = mapping(data.get("dataset"))
    if known("dataset loader", "dataset.loader", dataset.get("loader"), catalog.loaders):
        schema = catalog.loaders[dataset["loader"]]
        if schema is not None:
            for error in jsonschema.Draft202012Validator(schema).iter_errors(dataset.get("options", {})):
                problems.append(f"{source}: {key_path(['dataset', 'options', *error.absolute_path])}: {error.message}")
    known("dataset adapter", "dataset.adapter", dataset.get("adapter"), catalog.adapters)
    for family, spec in mapping(data.get("models")).items():
        spec = mapping(spec)
        if known("architecture", f"models.{family}.architecture", spec.get("architecture"), catalog.architectures):
            problems += [f"{source}: key 'models.{family}.params.{key}': {problem}"
                         for key, problem in argument_problems(catalog.architectures[spec["architecture"]], mapping(spec.get("params")))]
    metrics = data.get("metrics")
    for position, name in enumerate(metrics if isinstance(metrics, list) else []):
        known("metric", f"metrics[{position}]", name, catalog.metrics)
    for name, overrides in mapping(data.get("methods")).items():
        if f"method '{name}'" in catalog.clashes:  # refused where it is used, naming both plugins
            continue
        if known("method", f"methods.{name}", name, catalog.methods):
            defaults = catalog.methods[name]["defaults"]
            for key, value in mapping(overrides).items():
                if key not in defaults:
                    problems.append(f"{source}: key 'methods.{name}.{key}': {unknown_name(f'argument of method {name!r}', key, defaults)}")
                elif (expected := type_problem(value, defaults[key])) is not None:
                    problems.append(f"{source}: key 'methods.{name}.{key}': {expected}")
    return problems


def mapping(value) -> dict:
    """``value`` where it is a mapping, else an empty one (a card section whose structure the schema refuses)."""
    return value if isinstance(value, dict) else {}


def fingerprint(entries) -> str:
    """A hash of the installed plugins (entry point, package, version) and of their files and mubench's own, by path,
    size and modification time: any change to any of them gives another."""
    parts: list = [FORMAT]
    modules = {"mubench"}
    for entry in sorted(entries, key=lambda e: e.name):
        parts.append([entry.name, entry.value, entry.dist.name if entry.dist else None, entry.dist.version if entry.dist else None])
        modules.add(entry.module)
    for module in sorted(modules):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        roots = list(spec.submodule_search_locations or []) if spec and spec.submodule_search_locations else \
            [spec.origin] if spec and spec.origin else []
        for root in map(Path, roots):
            files = sorted(root.rglob("*")) if root.is_dir() else [root]
            for path in files:
                if path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts and path.is_file():
                    stat = path.stat()
                    parts.append([module, str(path), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]
