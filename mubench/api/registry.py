"""The plugin registry: everything mubench knows is contributed through pluggy hooks.

Plugins are found through entry points in group ``mubench`` (the built-in tasks,
methods and metrics included); ``include_paths`` add folders of task cards at run
time. A plugin is isolated from the others: one that fails to import, or whose hook
raises, is named in one warning line and left out; a contribution with a bad name
or of the wrong kind is left out the same way; a name given twice is refused only
where it is used, naming both sources. The rest of mubench keeps working.
"""
from __future__ import annotations

import inspect
import logging
import re
from functools import cached_property
from importlib.metadata import entry_points
from pathlib import Path

import jsonschema
import pluggy

from mubench import hookspecs
from mubench.api.card import TaskCard, load_card, read_yaml
from mubench.errors import UserError, key_path, unknown_name

PROJECT = "mubench"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a name that can be part of a file name (results, caches)

log = logging.getLogger("mubench")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for a warning about someone else's code."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict, "tuple": list}


def type_problem(value, default) -> str | None:
    """Why ``value`` cannot stand where ``default`` is the default (an int may stand for a float), or None."""
    expected = type(default)
    if default is None or isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    return f"expected {expected.__name__} (as its default {default!r}), got {value!r}"


def argument_problems(builder, params: dict) -> list[tuple[str, str]]:
    """``(key, problem)`` for each of a card's ``params`` that ``builder`` (an architecture: ``(task, **params)``)
    does not take, or takes with another type: read from its signature's defaults, or its annotations where the
    default is None. A builder that takes ``**params`` accepts any other key."""
    try:
        parameters = list(inspect.signature(builder).parameters.values())[1:]
    except (TypeError, ValueError):
        return []
    named = {p.name: p for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters)
    problems = []
    for key, value in params.items():
        if key not in named:
            if not open_ended:
                problems.append((key, f"not a parameter of this architecture (it takes: {', '.join(named) or 'none'})"))
            continue
        default, annotation = named[key].default, named[key].annotation
        if default is not inspect.Parameter.empty and default is not None:
            problem = type_problem(value, default)
        elif isinstance(annotation, str) and value is not None:
            allowed = [TYPES[word] for word in re.findall(r"[a-z]+", annotation) if word in TYPES]
            problem = None if not allowed or any(type_problem(value, kind()) is None for kind in allowed) else \
                f"expected {annotation}, got {value!r}"
        else:
            problem = None
        if problem:
            problems.append((key, problem))
    return problems


class Registry:
    """Tasks (cards), task types, dataset loaders and adapters, architectures, methods and metrics of all plugins."""

    def __init__(self, include_paths=(), plugins=()):
        self.plugins = pluggy.PluginManager(PROJECT)
        self.plugins.add_hookspecs(hookspecs)
        self.packages: dict[str, dict] = {}  # plugin name -> the package (name and version) that installed it
        for entry in entry_points(group=PROJECT):
            source = f"plugin '{entry.name}'" + (f" (package {entry.dist.name})" if entry.dist else "")
            try:
                self.plugins.register(entry.load(), name=entry.name)
                if entry.dist is not None:
                    self.packages[entry.name] = {"package": entry.dist.name, "version": entry.dist.version}
                log.debug("%s %s registered from %s", source, entry.dist.version if entry.dist else "", entry.value)
            except Exception as e:  # noqa: BLE001 - any failure of third-party code leaves that plugin out
                log.warning("%s failed to load and is left out: %s", source, one_line(e))
        for plugin in plugins:
            self.plugins.register(plugin)
        self.include_paths = [Path(p) for p in include_paths]
        for path in self.include_paths:
            if not path.is_dir():
                raise UserError(f"--include-path {path}: no such folder")
        self.clashes: dict[str, str] = {}  # "<kind> '<name>'" -> the two sources that both give it
        self.owners: dict[tuple[str, str], str] = {}  # (kind, name) -> the plugin that gives it

    def _answers(self, hook: str):
        """Each plugin's answer to ``hook``, as (plugin name, answer); a plugin whose hook raises is left out."""
        for impl in getattr(self.plugins.hook, hook).get_hookimpls():
            try:
                answer = impl.function() or []
                yield impl.plugin_name, list(answer.items()) if isinstance(answer, dict) else list(answer)
            except Exception as e:  # noqa: BLE001
                log.warning("plugin '%s': hook %s raised %s; its answer is left out", impl.plugin_name, hook, one_line(e))

    def _collect(self, hook: str, kind: str, key=None, valid=callable, problem=None) -> dict:
        """Merge one hook's answers over all plugins, checking each name and value (and, with ``problem``, what it
        declares) as it registers."""
        merged, owner = {}, {}
        for plugin, answer in self._answers(hook):
            for item in answer:
                try:
                    name, value = (key(item), item) if key else item
                except Exception as e:  # noqa: BLE001
                    log.warning("plugin '%s': a %s it gives is malformed (%s) and left out", plugin, kind, one_line(e))
                    continue
                if not isinstance(name, str) or not NAME.fullmatch(name):
                    log.warning("plugin '%s': %s %r is left out: a name is letters, digits, '_', '.' and '-', "
                                "starting with a letter or digit", plugin, kind, name)
                    continue
                if not valid(value):
                    log.warning("plugin '%s': %s '%s' is left out: %r is not a %s", plugin, kind, name, value, kind)
                    continue
                declared = problem(value) if problem else None
                if declared:
                    log.warning("plugin '%s': %s '%s' is left out: %s", plugin, kind, name, declared)
                    continue
                if name in merged or f"{kind} '{name}'" in self.clashes:
                    self.clashes.setdefault(f"{kind} '{name}'", f"{owner.get(name, '?')} and {plugin}")
                    merged.pop(name, None)
                    log.warning("%s '%s' is given by two plugins (%s and %s); neither is used", kind, name, owner.get(name, "?"),
                                plugin)
                    continue
                merged[name], owner[name] = value, plugin
        self.owners.update({(kind, name): plugin for name, plugin in owner.items() if name in merged})
        return merged

    def _get(self, kind: str, name: str, known: dict, what: str | None = None):
        clash = self.clashes.get(f"{kind} '{name}'")
        if clash:
            raise UserError(f"{kind} '{name}' is given twice ({clash}); remove one of them")
        if name not in known:
            raise unknown_name(what or kind, name, known)
        return known[name]

    @cached_property
    def methods(self) -> dict:
        from mubench.api.method import Method

        return self._collect("mubench_methods", "method", key=lambda cls: cls.name,
                             valid=lambda cls: isinstance(cls, type) and issubclass(cls, Method),
                             problem=lambda cls: cls.declaration_problem())

    @cached_property
    def task_types(self) -> dict:
        from mubench.api.task import TaskType

        return self._collect("mubench_task_types", "task type", key=lambda cls: cls.name,
                             valid=lambda cls: isinstance(cls, type) and issubclass(cls, TaskType))

    @cached_property
    def dataset_loaders(self) -> dict:
        return self._collect("mubench_dataset_loaders", "dataset loader")

    @cached_property
    def dataset_adapters(self) -> dict:
        return self._collect("mubench_dataset_adapters", "dataset adapter")

    @cached_property
    def metrics(self) -> dict:
        from mubench.api.metric import Metric

        return self._collect("mubench_metrics", "metric", key=lambda metric: metric.name, valid=lambda m: isinstance(m, Metric))

    @cached_property
    def architectures(self) -> dict:
        return self._collect("mubench_architectures", "architecture")

    @cached_property
    def plugin_card_folders(self) -> dict[Path, str]:
        """Each plugin's card folders, and the plugin that gives each."""
        return {Path(d): plugin for plugin, dirs in self._answers("mubench_task_card_dirs") for d in dirs}

    @cached_property
    def card_folders(self) -> list[Path]:
        """The plugins' card folders and the include paths: where cards are found, and where ``include:`` may reach."""
        return list(self.plugin_card_folders) + self.include_paths

    def provider(self, kind: str, name: str) -> dict:
        """Where a registered ``kind`` (``task``, ``task type``, ``method``, …) named ``name`` comes from: its plugin and
        the package (name and version) that installed it; a card found under ``--include-path`` names that folder."""
        if kind == "task":
            path = self.card_paths[name].resolve()
            for folder, plugin in self.plugin_card_folders.items():
                if path.is_relative_to(Path(folder).resolve()):
                    return {"plugin": plugin} | self.packages.get(plugin, {})
            return {"include_path": str(path.parent)}
        plugin = self.owners[(kind, name)]
        return {"plugin": plugin} | self.packages.get(plugin, {})

    @cached_property
    def card_paths(self) -> dict[str, Path]:
        """Task name -> card file, over the plugins' card folders and the include paths.

        YAML files without a ``task`` key are base cards, used only through ``include:``.
        A file that cannot be read is named in a warning and left out; a task defined
        twice is refused where it is used.
        """
        paths: dict[str, Path] = {}
        for folder in self.card_folders:
            for path in sorted(folder.rglob("*.yaml")):
                try:
                    name = read_yaml(path).get("task")
                except UserError as e:
                    log.warning("task card left out: %s", e)
                    continue
                if name is None:
                    continue
                if not isinstance(name, str) or not NAME.fullmatch(name):
                    log.warning("task card left out: %s: key 'task': %r is not a name (letters, digits, '_', '.', '-')", path, name)
                elif name in paths or f"task '{name}'" in self.clashes:
                    self.clashes.setdefault(f"task '{name}'", f"{paths.get(name)} and {path}")
                    log.warning("task '%s' is defined twice (%s and %s); neither is used", name, paths.pop(name, "?"), path)
                else:
                    paths[name] = path
        return paths

    def card(self, name: str) -> TaskCard:
        return load_card(self._get("task", name, self.card_paths), roots=self.card_folders)

    def card_problems(self, card: TaskCard) -> list[str]:
        """Every problem of a card that only the plugins can see, one line each: a task type, architecture, loader,
        adapter, metric or method that is not registered; ``dataset.options`` against the loader's ``options_schema``;
        ``models.<family>.params`` against the architecture's signature; ``methods.<name>`` against the method's
        hyperparameters."""
        data, source = card.data, card.path
        problems = []

        def known(kind: str, key: str, name: str, registered: dict) -> bool:
            if name in registered:
                return True
            problems.append(f"{source}: key '{key}': {unknown_name(kind, name, registered)}")
            return False

        known("task type", "task_type", card.task_type, self.task_types)
        dataset = card.dataset
        if "loader" in dataset and known("dataset loader", "dataset.loader", dataset["loader"], self.dataset_loaders):
            schema = getattr(self.dataset_loaders[dataset["loader"]], "options_schema", None)
            if schema is not None:
                for error in jsonschema.Draft202012Validator(schema).iter_errors(dataset.get("options", {})):
                    problems.append(f"{source}: {key_path(['dataset', 'options', *error.absolute_path])}: {error.message}")
        if "adapter" in dataset:
            known("dataset adapter", "dataset.adapter", dataset["adapter"], self.dataset_adapters)
        for family, spec in card.models.items():
            if known("architecture", f"models.{family}.architecture", spec["architecture"], self.architectures):
                problems += [f"{source}: key 'models.{family}.params.{key}': {problem}"
                             for key, problem in argument_problems(self.architectures[spec["architecture"]], spec.get("params", {}))]
        for position, name in enumerate(data["metrics"]):
            known("metric", f"metrics[{position}]", name, self.metrics)
        for name, overrides in data.get("methods", {}).items():
            if known("method", f"methods.{name}", name, self.methods):
                defaults = self.methods[name].defaults
                for key, value in overrides.items():
                    if key not in defaults:
                        unknown = unknown_name(f"argument of method '{name}'", key, defaults)
                        problems.append(f"{source}: key 'methods.{name}.{key}': {unknown}")
                    elif (expected := type_problem(value, defaults[key])) is not None:
                        problems.append(f"{source}: key 'methods.{name}.{key}': {expected}")
        return problems

    def checked_card(self, name: str) -> TaskCard:
        """The card of task ``name``, refused in one line (its first problem) if it has any problem
        :meth:`card_problems` finds."""
        card = self.card(name)
        problems = self.card_problems(card)
        if problems:
            raise UserError(problems[0] + (f" (and {len(problems) - 1} more: `mubench validate {card.path}` lists them)"
                                           if len(problems) > 1 else ""))
        return card

    def method(self, name: str):
        return self._get("method", name, self.methods)

    def task_type(self, card: TaskCard):
        return self._get("task type", card.task_type, self.task_types, f"task type (in {card.path})")(card)

    def architecture(self, card: TaskCard, name: str):
        return self._get("architecture", name, self.architectures, f"architecture (in {card.path})")
