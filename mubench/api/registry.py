"""The plugin registry: everything mubench knows is contributed through pluggy hooks.

Plugins are found through entry points in group ``mubench`` (the built-in tasks,
methods and metrics included); ``include_paths`` add folders of task cards at run
time. A plugin is isolated from the others: one that fails to import, or whose hook
raises, is named in one warning line and left out; a contribution with a bad name
or of the wrong kind is left out the same way; a name given twice is refused only
where it is used, naming both sources. The rest of mubench keeps working.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
from functools import cached_property
from importlib.metadata import entry_points
from pathlib import Path

import pluggy

from mubench import hookspecs
from mubench.api.card import TaskCard, load_card, read_yaml, refuse, resolve_includes, structure_problems
from mubench.api.catalog import Catalog, card_problems, fingerprint, plain, signature_spec
from mubench.errors import UserError, problem_key, unknown_name

PROJECT = "mubench"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a name that can be part of a file name (results, caches)

log = logging.getLogger("mubench")


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``, for a warning about someone else's code."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


class Said(logging.Handler):
    """The warnings logged while plugins load and register, kept to be said again whenever a cached catalog is read;
    a warning the catalog has said already is not said twice when the live plugins load later in the process."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.replayed: set[str] = set()

    def emit(self, record):
        self.messages.append(record.getMessage())

    def filter(self, record):  # as a filter of the logger: drops what was said already
        return record.getMessage() not in self.replayed

    def replay(self, messages: list[str]) -> None:
        for message in messages:
            log.warning("%s", message)
        self.replayed.update(messages)

    @contextlib.contextmanager
    def listening(self):
        log.addHandler(self)
        log.addFilter(self)
        try:
            yield
        finally:
            log.removeFilter(self)
            log.removeHandler(self)


class Registry:
    """Tasks (cards), task types, dataset loaders and adapters, architectures, methods and metrics of all plugins."""

    def __init__(self, include_paths=(), plugins=()):
        self.extra_plugins = list(plugins)
        self.include_paths = [Path(p) for p in include_paths]
        for path in self.include_paths:
            if not path.is_dir():
                raise UserError(f"--include-path {path}: no such folder")
        self.clashes: dict[str, str] = {}  # "<kind> '<name>'" -> the two sources that both give it
        self.owners: dict[tuple[str, str], str] = {}  # (kind, name) -> the plugin that gives it
        self.packages: dict[str, dict] = {}  # plugin name -> the package (name and version) that installed it
        self.said = Said()  # the warnings of loading and collecting plugins, which a cached catalog says again

    @cached_property
    def entries(self) -> list:
        """The entry points of group ``mubench`` (reading them imports nothing)."""
        return list(entry_points(group=PROJECT))

    @cached_property
    def plugins(self) -> pluggy.PluginManager:
        """The plugins, imported on first use: a plugin that fails to import is named in a warning and left out."""
        manager = pluggy.PluginManager(PROJECT)
        manager.add_hookspecs(hookspecs)
        with self.said.listening():
            self._register(manager)
        return manager

    def _register(self, manager: pluggy.PluginManager) -> None:
        for entry in self.entries:
            source = f"plugin '{entry.name}'" + (f" (package {entry.dist.name})" if entry.dist else "")
            try:
                manager.register(entry.load(), name=entry.name)
                if entry.dist is not None:
                    self.packages[entry.name] = {"package": entry.dist.name, "version": entry.dist.version}
                log.debug("%s %s registered from %s", source, entry.dist.version if entry.dist else "", entry.value)
            except Exception as e:  # noqa: BLE001 - any failure of third-party code leaves that plugin out
                log.warning("%s failed to load and is left out: %s", source, one_line(e))
        for plugin in self.extra_plugins:
            manager.register(plugin)

    @cached_property
    def catalog(self) -> Catalog:
        """What the plugins give, as plain data (see :mod:`mubench.api.catalog`): read from
        ``$MUBENCH_HOME/catalog`` when the installed plugins and their files are as they were when it was written
        (its warnings said again), else made from the live plugins and written there."""
        from mubench.files import mubench_home, write_json

        path = None if self.extra_plugins else mubench_home() / "catalog" / f"{fingerprint(self.entries)}.json"
        if path is not None and path.is_file():
            try:
                catalog = Catalog.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                catalog = None
            if catalog is not None:
                self.said.replay(catalog.warnings)
                for entry in self.entries:
                    log.debug("plugin '%s'%s from %s, as the catalog %s records it", entry.name,
                              f" (package {entry.dist.name} {entry.dist.version})" if entry.dist else "", entry.value, path)
                return catalog
        catalog = self.live_catalog()
        if path is not None:
            try:
                write_json(path, catalog.to_json())
            except (OSError, ValueError):
                log.debug("the plugin catalog could not be cached at %s", path)
        return catalog

    def live_catalog(self) -> Catalog:
        """The catalog made from the plugins themselves (imports them all), with the warnings that gave."""
        methods = {name: {"summary": cls.summary, "taxonomy": cls.taxonomy.as_dict() if cls.taxonomy else None,
                          "defaults": {key: plain(value) for key, value in cls.defaults.items()}}
                   for name, cls in self.methods.items()}
        metrics = {name: {"scope": m.scope, "higher_is_better": m.higher_is_better, "forgotten": m.forgotten,
                          "needs": sorted(m.needs), "description": m.description} for name, m in self.metrics.items()}
        catalog = Catalog(
            card_folders=[[str(folder), plugin] for folder, plugin in self.live_card_folders().items()],
            packages=self.packages, owners={}, clashes=dict(self.clashes), task_types=sorted(self.task_types),
            loaders={name: getattr(loader, "options_schema", None) for name, loader in self.dataset_loaders.items()},
            adapters=sorted(self.dataset_adapters),
            architectures={name: signature_spec(builder) for name, builder in self.architectures.items()},
            methods=methods, metrics=metrics, warnings=list(self.said.messages))
        for (kind, name), plugin in self.owners.items():
            catalog.owners.setdefault(kind, {})[name] = plugin
        return catalog

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
        with self.said.listening():
            return self._merge(hook, kind, key, valid, problem)

    def _merge(self, hook: str, kind: str, key, valid, problem) -> dict:
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

    def live_card_folders(self) -> dict[Path, str]:
        """Each plugin's card folders, and the plugin that gives each, from the plugins themselves."""
        with self.said.listening():
            return {Path(d): plugin for plugin, dirs in self._answers("mubench_task_card_dirs") for d in dirs}

    @cached_property
    def plugin_card_folders(self) -> dict[Path, str]:
        """Each plugin's card folders, and the plugin that gives each (from the catalog)."""
        return {Path(folder): plugin for folder, plugin in self.catalog.card_folders}

    @cached_property
    def card_folders(self) -> list[Path]:
        """The plugins' card folders and the include paths: where cards are found, and where ``include:`` may reach."""
        return list(self.plugin_card_folders) + self.include_paths

    def provider(self, kind: str, name: str) -> dict:
        """Where a registered ``kind`` (``task``, ``task type``, ``method``, …) named ``name`` comes from: its plugin and
        the package (name and version) that installed it; a card found under ``--include-path`` names that folder."""
        packages = self.catalog.packages
        if kind == "task":
            path = self.card_paths[name].resolve()
            for folder, plugin in self.plugin_card_folders.items():
                if path.is_relative_to(Path(folder).resolve()):
                    return {"plugin": plugin} | packages.get(plugin, {})
            return {"include_path": str(path.parent)}
        plugin = self.catalog.owners[kind][name]
        return {"plugin": plugin} | packages.get(plugin, {})

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

    def card_problems(self, path: Path) -> tuple[str | None, list[str]]:
        """The task name of the card at ``path`` and every problem it has, one line each: its YAML and includes (the
        first, raised), its structure (:func:`~mubench.api.card.structure_problems`), and what only the plugins can see
        (:func:`~mubench.api.catalog.card_problems`) of the keys whose structure is sound."""
        card, problems = self._read_card(path)
        return card.data.get("task"), problems

    def checked_card(self, name: str) -> TaskCard:
        """The card of task ``name``, refused in one line (its first problem, and how many more there are) if it has
        any problem :meth:`card_problems` finds."""
        path = self._get("task", name, self.card_paths)
        card, problems = self._read_card(path)
        refuse(problems, path)
        return card

    def _read_card(self, path: Path) -> tuple[TaskCard, list[str]]:
        """The card at ``path``, read once, with every problem :meth:`card_problems` reports."""
        data = resolve_includes(path, roots=self.card_folders)
        structural = structure_problems(data, path)
        broken = [key for problem in structural if (key := problem_key(problem))]

        def under_broken(key: str) -> bool:
            return any(key == top or key.startswith((top + ".", top + "[")) for top in broken)

        card = TaskCard(path, data)
        return card, structural + [problem for problem in card_problems(card, self.catalog) if not under_broken(problem_key(problem))]

    def method(self, name: str):
        return self._get("method", name, self.methods)

    def task_type(self, card: TaskCard):
        return self._get("task type", card.task_type, self.task_types, f"task type (in {card.path})")(card)

    def architecture(self, card: TaskCard, name: str):
        return self._get("architecture", name, self.architectures, f"architecture (in {card.path})")
