"""Sweeps: every task × model × method × ratio × seed (× method-argument grid) of a sweep file, resumable and exactly-once.

A cell is one ``mubench run``; it is done when its result file exists in the output
folder (results are written atomically, so a file is whole or absent). Running a
sweep runs the missing cells only, each under a lock on its file, so two sweeps (or
Ray workers) never run the same cell at once and a finished cell never runs again. A
cell that fails is recorded with its one-line error and the sweep goes on.

The work each cell shares with others is done once: θ₀ is trained once and cached,
its evaluation (metrics and attacks) cached (see :func:`mubench.harness.assess_original`),
and each task's data read and encoded once per worker process. With ``reference:
retrain`` the retrain cells run first, so that every other cell finds its reference.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import logging
import os
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

from mubench.api.registry import Registry
from mubench.errors import UserError, key_path
from mubench.files import read_json, write_json
from mubench.harness import Prepared, RunConfig, planned_filename, resolve, run
from mubench.parallel import RAY_KEYS, ray_map

log = logging.getLogger("mubench")

STATE = ".sweep"  # inside the output folder: cell locks, failures and the journal
KEYS = {"tasks": list, "models": (list, type(None)), "methods": (list, str), "ratios": (list, str, type(None)),
        "seeds": (list, str, type(None)), "original_seeds": (list, type(None)),
        "method_args": dict, "reference": (str, type(None)), "output": str, "device": str, "precision": str, "executor": str,
        "ray": dict, "time_budget": (str, int, float), "include_paths": list, "data_dir": (str, type(None)),
        "leaderboard": (dict, type(None)), "tuned": dict, "ulira": (dict, type(None))}
LEADERBOARD_KEYS = {"out": str, "from": list}


@dataclass
class Sweep:
    """A sweep file, read and checked: the grid's axes and how to run it."""

    tasks: list
    methods: list | str  # "all": every registered method (those that cannot run on a task are listed as n/a)
    models: list | None = None  # None: each task's default family
    ratios: list | str | None = None  # None: each card's default; "all": each card's ratios
    seeds: list | str | None = None  # None: each card's first seed; "all": each card's seeds
    original_seeds: list | None = None  # None: the card's θ₀; else every cell on each θ₀ trained with these seeds
    method_args: dict = field(default_factory=dict)  # method → {argument: value or list of values}
    reference: str | None = None
    output: str = "results"
    device: str = "auto"
    precision: str = "auto"
    executor: str = "local"
    ray: dict = field(default_factory=dict)
    leaderboard: dict | None = None  # {out: DIR, from: [DIR, ...] (default: the output folder)}: built after the run
    tuned: dict = field(default_factory=dict)  # method → the file `mubench tune` wrote, as --tuned takes it
    ulira: dict | None = None  # {shadows: N}: after the cells, U-LiRA on each configuration (at its first seed)
    time_budget: str | int | float = "retrain"
    include_paths: list = field(default_factory=list)
    data_dir: str | None = None

    @classmethod
    def read(cls, path: Path | None, overrides: dict) -> Sweep:
        """The sweep in ``path`` (YAML), with ``overrides`` (the command's flags) replacing its keys."""
        import yaml

        data = {}
        if path is not None:
            try:
                data = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, yaml.YAMLError) as e:
                raise UserError(f"{path}: cannot read the sweep file: {str(e).splitlines()[0]}") from None
            if not isinstance(data, dict):
                raise UserError(f"{path}: a sweep file is a mapping (tasks, methods, ratios, seeds, ...)")
        data |= {key: value for key, value in overrides.items() if value is not None}
        source = path or "sweep flags"
        for key, value in data.items():
            if key not in KEYS:
                raise UserError(f"{source}: unknown key '{key}' (known: {', '.join(KEYS)})")
            if not isinstance(value, KEYS[key]):
                raise UserError(f"{source}: key '{key}' has the wrong type ({type(value).__name__})")
        for key in ("tasks", "methods"):
            if not data.get(key):
                raise UserError(f"{source}: key '{key}' is required (a list)")
        if not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in data.get("original_seeds") or []):
            raise UserError(f"{source}: key 'original_seeds' is a list of integers")
        for key in ("methods", "ratios", "seeds"):
            if isinstance(data.get(key), str) and data[key] != "all":
                raise UserError(f"{source}: key '{key}' is a list or 'all', got {data[key]!r}")
        if data.get("executor", "local") not in ("local", "ray"):
            raise UserError(f"{source}: key 'executor' is 'local' or 'ray', got {data['executor']!r}")
        for key, value in data.get("ray", {}).items():
            if key not in RAY_KEYS or not isinstance(value, RAY_KEYS[key]):
                raise UserError(f"{source}: key {key_path(('ray', key))}: expected one of "
                                f"{', '.join(RAY_KEYS)} with a {'number' if key != 'address' else 'string'}")
        board = data.get("leaderboard") or {}
        for key, value in board.items():
            if key not in LEADERBOARD_KEYS or not isinstance(value, LEADERBOARD_KEYS[key]):
                raise UserError(f"{source}: key {key_path(('leaderboard', key))}: expected 'out' (a folder) or 'from' (a list of folders)")
        shadows = (data.get("ulira") or {}).get("shadows")
        if data.get("ulira") is not None and (set(data["ulira"]) != {"shadows"} or type(shadows) is not int):
            raise UserError(f"{source}: key 'ulira': expected {{shadows: N}}, the number of shadow originals")
        if board and "out" not in board:
            raise UserError(f"{source}: key 'leaderboard' needs 'out', the folder the page goes to")
        for method, file in data.get("tuned", {}).items():
            if not isinstance(file, str):
                raise UserError(f"{source}: key {key_path(('tuned', method))}: expected the path of a file `mubench tune` wrote")
        for method, grid in data.get("method_args", {}).items():
            if not isinstance(grid, dict):
                raise UserError(f"{source}: key {key_path(('method_args', method))} is a mapping of argument to value(s)")
        return cls(**data)

    def grid(self, method: str) -> list[dict]:
        """Every combination of the method's argument values (a list is a grid axis; a scalar is one value)."""
        axes = {key: value if isinstance(value, list) else [value] for key, value in self.method_args.get(method, {}).items()}
        return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


@dataclass
class Cell:
    """One run of the sweep: its configuration and the result file that marks it done."""

    config: RunConfig
    filename: str
    applicable: str | None = None  # why the method cannot run on the task, if it cannot

    @property
    def path(self) -> Path:
        return self.config.output_path / self.filename


def cells(sweep: Sweep, registry: Registry, loaded: dict) -> list[Cell]:
    """The sweep's cells, retrain cells first (they are the others' reference); every user error in the grid here."""
    planned = []
    chosen = sorted(registry.methods) if sweep.methods == "all" else sweep.methods
    methods = list(dict.fromkeys((["retrain"] if sweep.reference == "retrain" else []) + chosen))
    for task in sweep.tasks:
        card = registry.card(task)
        for model in sweep.models or [card.default_model]:
            for method in sorted(methods, key=lambda name: name != "retrain"):
                classwise = card.data["deletion"].get("mode", "samples") == "classes"
                ratios = [None] if classwise else card.ratios if sweep.ratios == "all" else sweep.ratios or [card.default_ratio]
                seeds = card.seeds if sweep.seeds == "all" else sweep.seeds or [card.seeds[0]]
                reason = Prepared(registry, task, model, None).unsupported(registry.method(method))
                if reason:  # one line for the method on this task, not one per cell
                    planned.append(Cell(RunConfig(task=task, method=method, model=model), f"{task}__{model}__{method}", reason))
                    continue
                originals = sweep.original_seeds or [None]
                for ratio, seed, args, original_seed in itertools.product(ratios, seeds, sweep.grid(method), originals):
                    config = RunConfig(task=task, method=method, model=model, deletion_ratio=ratio, seed=seed, method_args=args,
                                       original_seed=original_seed,
                                       device=sweep.device, precision=sweep.precision, time_budget=str(sweep.time_budget),
                                       output_path=Path(sweep.output).absolute(), include_paths=list(sweep.include_paths),
                                       data_dir=None if sweep.data_dir is None else Path(sweep.data_dir).absolute(),
                                       reference=sweep.reference if method != "retrain" else None,
                                       tuned=Path(sweep.tuned[method]).absolute() if method in sweep.tuned else None)
                    planned.append(plan_cell(config, registry, loaded))
    return planned


def plan_cell(config: RunConfig, registry: Registry, loaded: dict) -> Cell:
    """Resolve one cell (a user error stops the sweep) and name its result file; class-wise tasks read their data for it."""
    plan = resolve(config, registry, loaded)
    if plan.prepared.classwise:
        plan.prepared.load()
    return Cell(config, planned_filename(plan))


class Journal:
    """The sweep's append-only log (``.sweep/journal.jsonl``): each cell's start, finish or failure, with the process."""

    def __init__(self, output: Path):
        self.path = output / STATE / "journal.jsonl"

    def write(self, cell: Cell, event: str, **extra) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"cell": cell.filename, "event": event, "pid": os.getpid(),
                           "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra})
        with open(self.path, "a") as f:  # one write of one line: whole, or (killed mid-write) a torn last line that read() skips
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """Every whole event, oldest first."""
        if not self.path.is_file():
            return []
        events = []
        for line in self.path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return events


def failure_path(cell: Cell) -> Path:
    return cell.config.output_path / STATE / "failed" / cell.filename


def status(cell: Cell) -> str:
    """``n/a``, ``done`` (its result file is there), ``failed`` (the last try failed) or ``missing``."""
    if cell.applicable:
        return "n/a"
    if cell.path.is_file():
        return "done"
    return "failed" if failure_path(cell).is_file() else "missing"


@dataclass
class Outcome:
    """What running a cell came to: ``ran``, ``done`` (already there), ``failed`` (with its error) or ``n/a``."""

    filename: str
    state: str
    error: str | None = None
    unlearn_s: float = 0.0


def run_cell(cell: Cell, registry: Registry, loaded: dict) -> Outcome:
    """Run one cell unless its result exists, under the cell's lock; a failure is recorded, not raised."""
    journal = Journal(cell.config.output_path)
    lock_path = cell.config.output_path / STATE / "locks" / f"{cell.filename}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path):
        if cell.path.is_file():
            return Outcome(cell.filename, "done")
        journal.write(cell, "started")
        try:
            result, path = run(cell.config, registry, loaded)
        except UserError as e:
            error = str(e)
        except Exception as e:  # a crash in one cell (a method's bug, out of memory) must not stop the sweep
            log.debug("cell %s:\n%s", cell.filename, traceback.format_exc())
            error = f"{type(e).__name__}: {' '.join(str(e).split())}"
        else:
            if path.name != cell.filename:
                raise RuntimeError(f"cell {cell.filename} wrote {path.name}")  # the planner and the harness disagree: a bug
            failure_path(cell).unlink(missing_ok=True)
            journal.write(cell, "finished")
            return Outcome(cell.filename, "ran", unlearn_s=result["times"]["unlearn_s"])
        journal.write(cell, "failed", error=error)
        failure = failure_path(cell)
        failure.parent.mkdir(parents=True, exist_ok=True)
        write_json(failure, {"cell": cell.filename, "error": error})
        return Outcome(cell.filename, "failed", error)


def last_error(cell: Cell) -> str:
    try:
        return read_json(failure_path(cell), "failure record").get("error", "?")
    except UserError:
        return "?"


def execute_local(phases: list[list[Cell]], registry: Registry, loaded: dict) -> list[Outcome]:
    """In this process, one cell at a time, with a bar over the cells."""
    outcomes = []
    with tqdm(total=sum(map(len, phases)), desc="sweep", unit="cell", disable=None) as bar:
        for phase in phases:
            for cell in phase:
                outcomes.append(run_cell(cell, registry, loaded))
                bar.update()
    return outcomes


_worker: dict = {}  # a Ray worker process's registry and loaded data, kept between the cells it runs


def ray_cell(cell: Cell) -> Outcome:
    """Run a cell in a Ray worker, reusing the worker's registry and loaded data."""
    key = tuple(cell.config.include_paths)
    if _worker.get("key") != key:
        _worker.update(key=key, registry=Registry(cell.config.include_paths), loaded={})
    return run_cell(cell, _worker["registry"], _worker["loaded"])


def execute_ray(phases: list[list[Cell]], settings: dict) -> list[Outcome]:
    """One Ray task per cell (see :func:`mubench.parallel.ray_map`); workers write results to the shared output folder."""
    return list(ray_map(ray_cell, phases, settings, "sweep"))


def execute(sweep: Sweep, planned: list[Cell], registry: Registry, loaded: dict) -> list[Outcome]:
    """Run the planned cells that are not done: retrain cells as one phase first, then the rest."""
    states = [status(cell) for cell in planned]
    todo = [cell for cell, state in zip(planned, states) if state not in ("done", "n/a")]
    phases = [[c for c in todo if c.config.method == "retrain"], [c for c in todo if c.config.method != "retrain"]]
    done = [Outcome(c.filename, state, c.applicable) for c, state in zip(planned, states) if state in ("done", "n/a")]
    if sweep.executor == "ray":
        return done + execute_ray(phases, sweep.ray)
    return done + execute_local(phases, registry, loaded)


def attack_all(sweep: Sweep, planned: list[Cell], registry: Registry) -> list[Outcome]:
    """U-LiRA (``ulira: {shadows: N}``) on each configuration of the sweep at its first run seed, unless its file exists;
    every shadow original is shared by all methods. A failure is recorded in the outcome, not raised."""
    from mubench.ulira import UliraConfig, ulira

    outcomes, seen = [], set()
    for cell in planned:
        config = cell.config
        key = (config.task, config.model, config.method, config.deletion_ratio, json.dumps(config.method_args, sort_keys=True))
        if cell.applicable or key in seen:
            continue
        seen.add(key)
        try:
            result, path = ulira(UliraConfig(dataclasses.replace(config, original_seed=None), sweep.ulira["shadows"], sweep.executor,
                                             sweep.ray), registry, skip_done=True)
            outcomes.append(Outcome(path.name, "done" if result is None else "ran"))
        except UserError as e:
            outcomes.append(Outcome(cell.filename, "failed", str(e)))
    return outcomes


def plan_table(planned: list[Cell]) -> str:
    """One line per cell: its state and result file (or why it cannot run), then the counts."""
    lines, states = [], []
    for cell in planned:
        states.append(state := status(cell))
        detail = cell.applicable if state == "n/a" else last_error(cell) if state == "failed" else ""
        lines.append(f"{state:<8} {cell.filename}" + (f"  ({detail})" if detail else ""))
    return "\n".join(lines + [counted(states)])


def summary(outcomes: list[Outcome]) -> str:
    """The counts, and each failed cell with its error."""
    lines = ["sweep: " + counted([o.state for o in outcomes])]
    lines += [f"failed: {o.filename}: {o.error}" for o in outcomes if o.state == "failed"]
    return "\n".join(lines)


def counted(states: list[str]) -> str:
    """``N cells: a done, b missing, ...`` (states in alphabetical order)."""
    return f"{len(states)} cells: " + ", ".join(f"{n} {state}" for state, n in sorted(Counter(states).items()))

