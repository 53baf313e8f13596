"""The plugin registry: everything mubench knows is contributed through pluggy hooks.

Plugins are found through entry points in group ``mubench`` (the built-in tasks and
methods included); ``include_paths`` add folders of task cards at run time.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import pluggy

from mubench import hookspecs
from mubench.api.card import TaskCard, load_card, read_yaml
from mubench.errors import UserError, unknown_name

PROJECT = "mubench"


class Registry:
    """Tasks (cards), task types, dataset loaders and adapters, architectures, methods and metrics of all plugins."""

    def __init__(self, include_paths=(), plugins=()):
        self.plugins = pluggy.PluginManager(PROJECT)
        self.plugins.add_hookspecs(hookspecs)
        try:
            self.plugins.load_setuptools_entrypoints(PROJECT)
        except Exception as e:  # a third-party plugin that fails to import
            raise UserError(f"a mubench plugin failed to load: {type(e).__name__}: {e}") from None
        for plugin in plugins:
            self.plugins.register(plugin)
        self.include_paths = [Path(p) for p in include_paths]
        for path in self.include_paths:
            if not path.is_dir():
                raise UserError(f"--include-path {path}: no such folder")

    def _collect(self, hook: str, key=None) -> dict:
        """Merge one hook's answers over all plugins; a name given twice is an error."""
        merged, owner = {}, {}
        for impl in getattr(self.plugins.hook, hook).get_hookimpls():
            answer = impl.function() or []
            items = answer.items() if isinstance(answer, dict) else ((key(x), x) for x in answer)
            for name, value in items:
                if name in merged:
                    raise UserError(f"'{name}' ({hook}) is given by two plugins: {owner[name]} and {impl.plugin_name}")
                merged[name], owner[name] = value, impl.plugin_name
        return merged

    @cached_property
    def methods(self) -> dict:
        return self._collect("mubench_methods", key=lambda cls: cls.name)

    @cached_property
    def task_types(self) -> dict:
        return self._collect("mubench_task_types", key=lambda cls: cls.name)

    @cached_property
    def dataset_loaders(self) -> dict:
        return self._collect("mubench_dataset_loaders")

    @cached_property
    def dataset_adapters(self) -> dict:
        return self._collect("mubench_dataset_adapters")

    @cached_property
    def metrics(self) -> dict:
        return self._collect("mubench_metrics", key=lambda metric: metric.name)

    @cached_property
    def architectures(self) -> dict:
        return self._collect("mubench_architectures")

    @cached_property
    def card_paths(self) -> dict[str, Path]:
        """Task name -> card file, over the plugins' card folders and the include paths.

        YAML files without a ``task`` key are base cards, used only through ``include:``.
        """
        folders = [Path(d) for dirs in self.plugins.hook.mubench_task_card_dirs() for d in dirs]
        paths: dict[str, Path] = {}
        for folder in folders + self.include_paths:
            for path in sorted(folder.rglob("*.yaml")):
                name = read_yaml(path).get("task")
                if name is None:
                    continue
                if name in paths:
                    raise UserError(f"task '{name}' is defined twice: {paths[name]} and {path}")
                paths[str(name)] = path
        return paths

    def card(self, name: str) -> TaskCard:
        if name not in self.card_paths:
            raise unknown_name("task", name, self.card_paths)
        return load_card(self.card_paths[name])

    def method(self, name: str):
        if name not in self.methods:
            raise unknown_name("method", name, self.methods)
        return self.methods[name]

    def task_type(self, card: TaskCard):
        if card.task_type not in self.task_types:
            raise unknown_name(f"task type (in {card.path})", card.task_type, self.task_types)
        return self.task_types[card.task_type](card)

    def architecture(self, card: TaskCard, name: str):
        if name not in self.architectures:
            raise unknown_name(f"architecture (in {card.path})", name, self.architectures)
        return self.architectures[name]
