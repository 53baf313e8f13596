"""``mubench data``: a task's dataset loaded and checked against its card, before a long run."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from mubench.data import DatasetReport, load_splits, undecoded
from mubench.errors import UserError


@dataclass
class DataCheck:
    """What ``mubench data`` prints (``text``) and the problems it found, one line each."""

    text: str
    problems: list = field(default_factory=list)


def source_name(spec: dict, data_dir: Path | None) -> str:
    """Where the card's data comes from, as a reader would look it up."""
    if data_dir is not None:
        return f"--data-dir {data_dir}"
    if "loader" in spec:
        return f"loader {spec['loader']}"
    extras = [f"{key} {spec[key]}" for key in ("name", "revision", "data_dir") if spec.get(key)]
    return " ".join([spec.get("path", "(none)")] + extras)


def describe(value, feature=None) -> str:
    """One example's value, short: images and audio by their size, long text cut."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return f"<image {value.width}×{value.height} {value.mode}>"
    if isinstance(value, dict) and "bytes" in value:
        return describe_file(value)
    if isinstance(value, list) and value and isinstance(value[0], list):
        return f"<array {len(value)}×{len(value[0])}>"
    if isinstance(value, list):
        inner = getattr(feature, "feature", None)
        shown = describe(value[0], inner) if value else ""
        return f"[{len(value)} × {shown}]" if value and not isinstance(value[0], (str, int, float)) else repr(value)[:60]
    names = getattr(feature, "names", None)
    if names is not None and isinstance(value, int) and 0 <= value < len(names):
        return f"{value} ({names[value]})"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…'"


def describe_file(value: dict) -> str:
    """An undecoded audio or video file by its duration or size."""
    data = value.get("bytes")
    if data is None:
        return f"<file {value.get('path')}>"
    try:
        import soundfile

        info = soundfile.info(io.BytesIO(data))
        return f"<audio {info.duration:.2f} s, {info.samplerate} Hz>"
    except Exception:  # not audio soundfile reads: report its size only
        return f"<file of {len(data):,} bytes>"


def check_task_data(registry, task_name: str, data_dir: Path | None = None, examples: int = 2) -> DataCheck:
    """Load task ``task_name``'s data as a run would and compare it with its card.

    Problems (one line each): a split, column or feature type other than the card
    says; label names that do not fit the card's ``labels``/``num_labels``; a test
    label the training split lacks. Split sizes other than the card's ``sizes``
    are notes. The text shows the source, its split sizes, the task's examples
    per split, the labels and a few decoded training examples.
    """
    card = registry.card(task_name)
    task = registry.task_type(card)
    report = DatasetReport()
    splits = load_splits(card, registry.dataset_loaders, data_dir, registry.dataset_adapters, report)
    lines = [f"task {card.name}: {source_name(card.dataset, data_dir)}"]
    if report.source_sizes:
        lines.append("source splits: " + " · ".join(f"{name} {size:,}" for name, size in report.source_sizes.items()))
    lines += [f"note: {note}" for note in report.notes]
    if "train" in splits and not report.problems:
        try:
            task.prepare(splits["train"])
            if "test" in splits:
                task.strata(splits["test"])
            names = getattr(task, "label_names", None)
        except UserError as e:
            report.problems.append(str(e))
            names = None
        if names:
            lines.append(f"labels ({len(names)}): {', '.join(names[:12])}{', …' if len(names) > 12 else ''}")
        lines.append("task examples: " + " · ".join(f"{role} {len(split):,}" for role, split in splits.items()))
        shown = undecoded(splits["train"])
        for i in range(min(examples, len(shown))):
            row = shown[i]
            values = ", ".join(f"{key}={describe(value, shown.features[key])}" for key, value in row.items())
            lines.append(f"train[{i}]: {values}")
    lines.append(f"{len(report.problems)} problem(s)" if report.problems else "ok: the data has the card's schema")
    return DataCheck("\n".join(lines), report.problems)
