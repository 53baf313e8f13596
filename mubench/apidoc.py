"""``mubench docs``: the plugin API reference, generated from the docstrings (one Markdown page per hook and class).

The pages are committed under ``docs/api`` and a test regenerates them, so that they never drift from the code.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from mubench import hookspecs

CLASSES = [  # (page, import path): what a plugin builds on
    ("TaskType", "mubench.api.task:TaskType"),
    ("ClassificationTask", "mubench.tasks.classification:ClassificationTask"),
    ("TabularClassificationTask", "mubench.tasks.tabular:TabularClassificationTask"),
    ("Method", "mubench.api.method:Method"),
    ("Context", "mubench.api.method:Context"),
    ("Pass", "mubench.api.method:Pass"),
    ("Pair", "mubench.api.method:Pair"),
    ("Batch", "mubench.data:Batch"),
    ("UnlearningData", "mubench.data:UnlearningData"),
    ("TensorExamples", "mubench.data:TensorExamples"),
    ("ArrowExamples", "mubench.data:ArrowExamples"),
    ("Taxonomy", "mubench.api.method:Taxonomy"),
    ("Range", "mubench.api.method:Range"),
    ("Choice", "mubench.api.method:Choice"),
    ("Metric", "mubench.api.metric:Metric"),
]
HOOKS = [name for name, value in vars(hookspecs).items() if name.startswith("mubench_") and callable(value)]


def load(path: str):
    module, _, name = path.partition(":")
    return getattr(__import__(module, fromlist=[name]), name)


def docstring(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def annotation(value) -> str:
    return value if isinstance(value, str) else inspect.formatannotation(value)


def signature(function) -> str:
    """``name(arguments) -> return`` as written in the source, without ``self`` or ``cls``."""
    shown = inspect.signature(function, eval_str=False)
    arguments = []
    for parameter in list(shown.parameters.values()):
        if parameter.name in ("self", "cls"):
            continue
        text = {parameter.VAR_POSITIONAL: "*", parameter.VAR_KEYWORD: "**"}.get(parameter.kind, "") + parameter.name
        if parameter.annotation is not parameter.empty:
            text += f": {annotation(parameter.annotation)}"
        if parameter.default is not parameter.empty:
            text += f" = {parameter.default!r}"
        arguments.append(text)
    returns = "" if shown.return_annotation is shown.empty else f" -> {annotation(shown.return_annotation)}"
    return f"{function.__name__}({', '.join(arguments)}){returns}"


def hook_page(name: str) -> str:
    hook = getattr(hookspecs, name)
    arguments = list(inspect.signature(hook).parameters)
    returns = inspect.signature(hook, eval_str=False).return_annotation
    return "\n".join([
        f"# Hook `{name}`", "",
        "```python", "from mubench.api import hookimpl", "", "@hookimpl", f"def {name}():", "    ...", "```", "",
        f"**Arguments:** {', '.join(arguments) if arguments else 'none'}.  ",
        f"**Returns:** `{returns}`.", "",
        docstring(hook), "",
    ])


def shown(value) -> str:
    """``repr``, with sets sorted (their order changes from one process to the next)."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({{{', '.join(map(repr, sorted(value)))}}})"
    return repr(value)


def members(cls) -> list[str]:
    """The public attributes, properties and methods defined on ``cls`` itself, each with its signature and docstring
    (an override without one shows the docstring of what it overrides)."""
    def docstring(value, name=None):
        return inspect.cleandoc(getattr(value, "__doc__", None) or inspect.getdoc(getattr(cls, name, None)) or "").strip()

    lines = []
    annotations = cls.__dict__.get("__annotations__", {})
    for name, value in cls.__dict__.items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, (classmethod, staticmethod)):
            function = value.__func__
            lines += [f"### `{signature(function)}`" + (" *(classmethod)*" if isinstance(value, classmethod) else ""), "",
                      docstring(function, name) or "(no docstring)", ""]
        elif isinstance(value, property) or type(value).__name__ == "cached_property":
            lines += [f"### `{name}` *(property)*", "", docstring(value, name) or "(no docstring)", ""]
        elif inspect.isfunction(value):
            if name == "__init__" and not value.__doc__:
                continue
            lines += [f"### `{signature(value)}`", "", docstring(value, name) or "(no docstring)", ""]
        elif name in annotations:
            lines += [f"- `{name}: {annotations[name]} = {shown(value)}`", ""]
    fields = [name for name in annotations if name not in cls.__dict__ and not name.startswith("_")]
    if fields:
        lines = [f"Fields: {', '.join(f'`{name}: {annotations[name]}`' for name in fields)}.", ""] + lines
    return lines


def class_page(title: str, path: str) -> str:
    cls = load(path)
    bases = [base.__name__ for base in cls.__bases__ if base is not object]
    module = path.partition(":")[0]
    head = [f"# `{title}`", "", f"`from {module} import {cls.__name__}`" + (f" (subclass of {', '.join(bases)})" if bases else ""),
            "", docstring(cls), ""]
    return "\n".join(head + ["## Members", ""] + members(cls)).rstrip() + "\n"


def pages() -> dict[str, str]:
    """Every page of the reference, by file name."""
    out = {f"hook-{name}.md": hook_page(name) for name in HOOKS}
    out |= {f"{title}.md": class_page(title, path) for title, path in CLASSES}
    index = ["# mubench plugin API reference", "",
             "Generated from the docstrings by `mubench docs` (a test checks that these pages match the code).",
             "A plugin implements hooks (see `mubench/hookspecs.py`) and builds on these classes.", "", "## Hooks", ""]
    index += [f"- [`{name}`](hook-{name}.md): {docstring(getattr(hookspecs, name)).splitlines()[0]}" for name in HOOKS]
    index += ["", "## Classes", ""]
    index += [f"- [`{title}`]({title}.md): {docstring(load(path)).splitlines()[0]}" for title, path in CLASSES]
    out["index.md"] = "\n".join(index) + "\n"
    return out


def write_reference(folder: Path) -> list[Path]:
    """Write the pages into ``folder`` (replacing what a previous build wrote there); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.md"):
        stale.unlink()
    written = []
    for name, text in pages().items():
        (folder / name).write_text(text)
        written.append(folder / name)
    return written
