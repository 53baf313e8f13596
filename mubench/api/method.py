"""The unlearning method: a short class that says only what is particular to it.

The core builds the optimisers, moves batches to the device, runs autocast, shows
progress, schedules the learning rate and enforces the time budget. A method chooses
which data each epoch passes over (:meth:`Method.passes`), the loss of a batch
(:meth:`Method.loss`) and, optionally, set-up work, gradient surgery, several
optimisers (:meth:`Method.optimizer_group`) and their schedules. It declares what it
is (:class:`Taxonomy`, MU-Bench's four facets) and the ranges a hyperparameter search
may try (``search_space``: :class:`Range` and :class:`Choice`).
"""
from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import ClassVar, NamedTuple

import torch
from torch.utils.data import DataLoader

from mubench.api.task import TaskType
from mubench.data import Batch, UnlearningData
from mubench.errors import UserError, unknown_name
from mubench.loop import OPTIMIZERS, Budget, LoopReport, accumulate_gradients, learning_rate_factor, optimise


class Pass(NamedTuple):
    """One sweep of an epoch: the ``phase`` name handed to :meth:`Method.loss` and its loader."""

    phase: str
    loader: DataLoader


@dataclass
class Context:
    """What a method works with: the task, the model being unlearned, the data and the device."""

    task: TaskType
    model: torch.nn.Module
    data: UnlearningData
    device: torch.device
    precision: str
    build_model: Callable[[], torch.nn.Module]
    generator: torch.Generator
    budget: Budget = field(default_factory=Budget)

    def frozen_copy(self, model: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of ``model`` (default: the model as it is now) in eval mode with no gradients."""
        frozen = copy.deepcopy(model if model is not None else self.model).eval()
        frozen.requires_grad_(False)
        return frozen

    def fresh_model(self) -> torch.nn.Module:
        """A randomly initialised model of the same family, on the device."""
        return self.build_model().to(self.device)


KNOWLEDGE = ("loss", "logits", "representation", "none")
CORRUPTION = ("gradient", "data", "model", "weights", "none")
RETENTION = ("loss", "logits", "representation")
DENSITY, PLACEMENT = ("dense", "sparse"), ("internal", "external")


@dataclass(frozen=True)
class Taxonomy:
    """A method in MU-Bench's teacher-student taxonomy (its Table 2), one word per facet.

    ``knowledge``: how it measures what the model knows of D_f (``loss``, ``logits``,
    ``representation``, or ``none`` when it never looks at D_f); ``corruption``: how it
    degrades that knowledge (``gradient`` reversal, random or substitute ``data``, an
    incompetent teacher ``model``, a direct edit of the ``weights``, or ``none``);
    ``retention``: how it keeps D_r's (``loss``, ``logits``, ``representation``, joined
    by ``+``, or ``none``); ``parameters``: which move, ``dense`` or ``sparse`` and
    ``internal`` or ``external`` (``"sparse, internal"``), or ``none``.
    """

    knowledge: str
    corruption: str
    retention: str
    parameters: str

    def problem(self) -> str | None:
        """What is wrong with the facets, in words, or None."""
        if self.knowledge not in KNOWLEDGE:
            return f"taxonomy knowledge {self.knowledge!r} is not one of {', '.join(KNOWLEDGE)}"
        if self.corruption not in CORRUPTION:
            return f"taxonomy corruption {self.corruption!r} is not one of {', '.join(CORRUPTION)}"
        parts = self.retention.split("+")
        if self.retention != "none" and (len(set(parts)) != len(parts) or not set(parts) <= set(RETENTION)):
            return f"taxonomy retention {self.retention!r} is not 'none' or a '+'-join of {', '.join(RETENTION)}"
        density, _, placement = self.parameters.partition(", ")
        if self.parameters != "none" and (density not in DENSITY or placement not in PLACEMENT):
            return f"taxonomy parameters {self.parameters!r} is not 'none' or '<dense|sparse>, <internal|external>'"
        return None

    def as_dict(self) -> dict:
        """The facets by name, as results record them."""
        return asdict(self)


@dataclass(frozen=True)
class Range:
    """A numeric knob of the search space: from ``low`` to ``high``, on a ``log`` scale or not; whole numbers when
    the hyperparameter is an int."""

    low: float
    high: float
    log: bool = False

    def problem(self, default) -> str | None:
        """What is wrong with this range for a hyperparameter whose default is ``default``, in words, or None."""
        if isinstance(default, bool) or not isinstance(default, (int, float)):
            return f"a range for a hyperparameter that is not a number ({default!r})"
        if not self.low < self.high or (self.log and self.low <= 0):
            return f"range [{self.low}, {self.high}] is empty" + (" or not positive on a log scale" if self.log else "")
        if isinstance(default, int) and not (float(self.low).is_integer() and float(self.high).is_integer()):
            return f"range [{self.low}, {self.high}] of an integer hyperparameter has fractional ends"
        return None

    def as_dict(self) -> dict:
        """The range as a study records it."""
        return {"low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Choice:
    """A categorical knob of the search space: one of ``options``."""

    options: tuple

    def problem(self, default) -> str | None:
        """What is wrong with this choice for a hyperparameter whose default is ``default``, in words, or None."""
        if len(self.options) < 2:
            return "a choice needs two options or more"
        if any(type(option) is not type(default) for option in self.options):
            return f"choices {self.options!r} are not all of the default's type ({type(default).__name__})"
        return None

    def as_dict(self) -> dict:
        """The choice as a study records it."""
        return {"options": list(self.options)}


OPTIMISER_KEYS = ("epochs", "optimizer", "lr", "momentum", "weight_decay", "lr_decay_epochs", "lr_decay", "grad_accum_steps",
                  "max_grad_norm", "warmup_steps")  # what the core's training loop reads of a method's hyperparameters
TRAINING_SPACE = {"lr": Range(1e-5, 1e-1, log=True), "epochs": Range(1, 10)}


OUTPUTS = {"class_logits": "class logits", "token_logits": "token logits", "noise": "noise predictions"}


def output_problem(task: TaskType, *outputs: str) -> str | None:
    """Why a method that reads a model's ``outputs`` (kinds of :attr:`TaskType.output`) cannot run on ``task``, or None."""
    if task.output in outputs:
        return None
    return (f"it works on {' or '.join(OUTPUTS.get(o, o) for o in outputs)}; task type '{task.name}' "
            f"gives {OUTPUTS.get(task.output, task.output)}")


class Method:
    """Base class of unlearning methods.

    ``defaults`` lists every hyperparameter with its default; the card's ``unlearn``
    section (or ``train`` where ``recipe = "train"``), then ``methods.<name>``, then
    ``--method-args`` override them. ``time_limited`` methods stop when unlearning
    would take longer than retraining. A method with ``trains = False`` does all its
    work in :meth:`setup` (an edit of the weights, no optimiser), timed and budgeted
    like the rest. ``train_mode = False`` trains with the model in eval mode (its
    authors' choice where BatchNorm statistics stay frozen). ``taxonomy`` places the
    method in MU-Bench's taxonomy and ``search_space`` names the knobs a tuner may
    turn (hyperparameters of ``defaults``; by default ``TRAINING_SPACE``'s among them). During training, ``step`` is the
    optimiser step being taken.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    recipe: ClassVar[str] = "unlearn"
    time_limited: ClassVar[bool] = True
    trains: ClassVar[bool] = True
    train_mode: ClassVar[bool] = True
    taxonomy: ClassVar[Taxonomy | None] = None
    search_space: ClassVar[dict | None] = None
    defaults: ClassVar[dict] = dict(
        epochs=1, batch_size=32, optimizer="adam", lr=1e-4, momentum=0.9, weight_decay=0.0,
        lr_decay_epochs=[], lr_decay=0.1, grad_accum_steps=1, max_grad_norm=0.0, warmup_steps=0,
    )
    choices: ClassVar[dict] = {"optimizer": tuple(OPTIMIZERS)}

    def __init__(self, ctx: Context, args: dict):
        self.ctx = ctx
        self.hp = SimpleNamespace(**args)
        self.step = 0

    @classmethod
    def resolve_args(cls, card, overrides: dict | None = None, sources: dict | None = None, tuned: dict | None = None,
                     tuned_source: str = "the tuned file") -> dict:
        """Hyperparameters: ``defaults`` < card recipe < ``methods.<name>`` < ``tuned`` (what ``mubench tune`` chose,
        read from ``tuned_source``) < ``overrides``.

        The card's shared recipe (``unlearn``, or ``train`` for ``recipe = "train"``)
        sets the keys a method declares under the card's ``protocol: mubench`` (the
        default: MU-Bench's one optimiser and batch size for all methods); under
        ``protocol: authors`` the shared ``unlearn`` recipe is skipped and each method
        keeps its authors' defaults. A key the method does not know in
        ``methods.<name>``, ``tuned`` or ``overrides`` is an error. ``sources``, if given, is
        filled with where each value came from: ``method``, ``card.<recipe>``,
        ``card.methods``, ``tuned``, ``command line``.
        """
        args = dict(cls.defaults)
        origin = dict.fromkeys(args, "method")
        if cls.recipe == "train" or card.data.get("protocol", "mubench") == "mubench":
            shared = {k: v for k, v in card.data[cls.recipe].items() if k in args}
            args.update(shared)
            origin.update(dict.fromkeys(shared, f"card.{cls.recipe}"))
        for tag, source, values in (("card.methods", f"{card.path}: methods.{cls.name}", card.data.get("methods", {}).get(cls.name, {})),
                                    ("tuned", f"{tuned_source}: methods.{cls.name}", tuned or {}),
                                    ("command line", "--method-args", overrides or {})):
            for key, value in values.items():
                if key not in args:
                    raise unknown_name(f"argument of method '{cls.name}' in {source}", key, args)
                args[key] = _coerce(key, value, cls.defaults[key], source)
                origin[key] = tag
        if sources is not None:
            sources.update(origin)
        problem = cls.check_args(args)
        if problem:
            raise UserError(f"method '{cls.name}': {problem}")
        return args

    @classmethod
    def check_args(cls, args: dict) -> str | None:
        """What is wrong with resolved hyperparameters, in words, or None."""
        for key, allowed in cls.choices.items():
            if key in args and args[key] not in allowed:
                return f"{key} must be one of {', '.join(allowed)}, got {args[key]!r}"
        for key in ("epochs", "batch_size", "lr", "grad_accum_steps"):
            if key in args and not args[key] > 0:
                return f"{key} must be positive, got {args[key]}"
        for key in ("max_grad_norm", "warmup_steps"):
            if key in args and not args[key] >= 0:
                return f"{key} must not be negative, got {args[key]}"
        return None

    @classmethod
    def unused_args(cls, args: dict) -> set[str]:
        """The resolved hyperparameters that have no effect, which results leave out rather than report as used:
        ``momentum`` under an optimiser other than SGD, and the optimiser's settings of a method that does not train."""
        unused = set(OPTIMISER_KEYS) if not cls.trains else {"momentum"} if args.get("optimizer") != "sgd" else set()
        return unused & args.keys()

    @classmethod
    def knobs(cls) -> dict:
        """The search space: ``search_space``, or, where a method declares none, the training knobs (``lr``, ``epochs``)
        among its hyperparameters."""
        if cls.search_space is not None:
            return cls.search_space
        return {key: knob for key, knob in TRAINING_SPACE.items() if key in cls.defaults}

    @classmethod
    def declaration_problem(cls) -> str | None:
        """What is wrong with the class's taxonomy or search space, in words, or None (checked as it registers)."""
        if cls.taxonomy is not None and not isinstance(cls.taxonomy, Taxonomy):
            return f"its taxonomy is {cls.taxonomy!r}, not a Taxonomy"
        problem = cls.taxonomy.problem() if cls.taxonomy is not None else None
        if problem:
            return problem
        for key, knob in cls.knobs().items():
            if key not in cls.defaults:
                return f"its search space names '{key}', which is not one of its hyperparameters"
            if not isinstance(knob, (Range, Choice)):
                return f"its search space's '{key}' is {knob!r}, not a Range or a Choice"
            problem = knob.problem(cls.defaults[key])
            if problem:
                return f"search space '{key}': {problem}"
        return None

    @classmethod
    def unsupported(cls, task: TaskType, skeleton: Callable[[], torch.nn.Module]) -> str | None:
        """Why this method cannot run on ``task`` (before its data is loaded), or None when it can.

        ``skeleton()`` builds the model family's model without its weights (on the meta
        device), for methods that need a structure (convolutions, blocks); call it only
        when needed.
        """
        return None

    @property
    def model(self) -> torch.nn.Module:
        """The model being unlearned (``self.ctx.model``)."""
        return self.ctx.model

    @property
    def task(self) -> TaskType:
        """The task type (``self.ctx.task``): its forward pass, loss, labels (``task.label_names``)."""
        return self.ctx.task

    # --- what a method says ---------------------------------------------------------------
    def setup(self) -> None:
        """Work before the first epoch (teachers, masks); it counts as unlearning time."""

    def passes(self, epoch: int) -> list[Pass]:
        """The sweeps of epoch ``epoch`` in order."""
        raise NotImplementedError

    def loss(self, batch: Batch, phase: str) -> torch.Tensor:
        """The scalar loss of ``batch`` in ``phase``; the core back-propagates it."""
        raise NotImplementedError

    def after_backward(self) -> None:
        """Gradient surgery between ``backward()`` and the optimiser step."""

    def finish(self) -> None:
        """Work after the last epoch (quantising the weights); it counts as unlearning time."""

    def total_epochs(self) -> int:
        """How many epochs the loop runs (``epochs``; methods with stages of their own add theirs)."""
        return self.hp.epochs

    def optimizer_group(self, phase: str, epoch: int) -> str:
        """The optimiser that steps on ``phase``'s batches in ``epoch``: one per name, each with its own state, made
        when first used over the parameters trainable then. One (``main``) unless a method says otherwise."""
        return "main"

    def optimizer_settings(self, group: str) -> dict:
        """Optimiser, learning-rate schedule, accumulation and clipping of optimiser ``group``, read from the
        hyperparameters."""
        hp = self.hp
        return dict(optimizer=hp.optimizer, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                    lr_decay_epochs=list(hp.lr_decay_epochs), lr_decay=hp.lr_decay, grad_accum_steps=hp.grad_accum_steps,
                    max_grad_norm=hp.max_grad_norm, warmup_steps=hp.warmup_steps)

    def learning_rate_factor(self, group: str, step: int, epoch: int) -> float:
        """The factor on ``group``'s learning rate at its ``step``-th step, in ``epoch``: by default a linear warm-up
        over ``warmup_steps`` steps, times ``lr_decay`` per ``lr_decay_epochs`` milestone passed."""
        settings = self.optimizer_settings(group)
        return learning_rate_factor(step, epoch, settings["warmup_steps"], settings["lr_decay_epochs"], settings["lr_decay"])

    def unlearn(self) -> LoopReport:
        """Set up, then (for a method that ``trains``) optimise for :meth:`total_epochs` epochs, then finish; the whole
        call is timed."""
        import torch._dynamo  # noqa: F401  torch's optimisers import it on first use (seconds): before the clock starts

        start = time.perf_counter()
        self.ctx.budget.start()
        self.setup()
        if self.trains:
            report = optimise(self, self.model, self.total_epochs(), self.ctx.device, self.ctx.precision,
                              self.ctx.budget, desc=self.name)
        else:
            report = LoopReport(budget_exhausted=self.ctx.budget.spent(0))
        self.finish()
        report.seconds = time.perf_counter() - start
        return report

    # --- helpers --------------------------------------------------------------------------
    def loader(self, part: str, batch_size: int | None = None, **options) -> DataLoader:
        """A shuffled loader over ``part`` (``forget``, ``retain``, ``train``) at the method's batch size."""
        return self.ctx.data.loader(part, batch_size or self.hp.batch_size, **options)

    def paired(self, batch_size: int | None = None, retain_batch_size: int | None = None, lead: str = "forget") -> PairedLoader:
        """Batches of D_f and D_r taken in one step, for losses that need both: each batch of the ``lead`` part (which sets
        the pass's length) with the next batch of the other, which restarts (reshuffled) when it runs out."""
        for part in ("forget", "retain"):
            if len(getattr(self.ctx.data, part)) == 0:
                raise UserError(f"method '{self.name}' pairs D_f with D_r batches, but D_{part[0]} is empty")
        forget = self.loader("forget", batch_size)
        return PairedLoader(forget, self.loader("retain", retain_batch_size or batch_size), lead)

    def class_counts(self, part: str) -> torch.Tensor:
        """How many examples of each class ``part`` holds (a classification task's ``labels``), ``[classes]``."""
        counts = torch.zeros(len(self.task.label_names), dtype=torch.long)
        for batch in self.loader(part, shuffle=False):
            counts += torch.bincount(batch.inputs["labels"].cpu(), minlength=len(counts))
        return counts

    def accumulated_gradients(self, part: str, loss: Callable[[Batch], torch.Tensor], batch_size: int | None = None, **part_options):
        """The gradient of ``loss`` summed over ``part``'s batches (unshuffled; ``part_options`` as
        :meth:`UnlearningData.part` takes them), per trainable parameter of the model (None where none flows)."""
        loader = self.loader(part, batch_size, shuffle=False, **part_options)
        return accumulate_gradients(self.model, loader, loss, self.ctx.device, self.ctx.precision)

    def logits(self, batch: Batch, model: torch.nn.Module | None = None) -> torch.Tensor:
        """The task's forward pass of ``batch`` through ``model`` (default: the model being unlearned)."""
        return self.task.forward(model if model is not None else self.model, batch.inputs)

    def teacher_logits(self, teacher: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Logits of a frozen model, without building a graph."""
        with torch.no_grad():
            return self.logits(batch, teacher)

    def distill(self, logits: torch.Tensor, teacher: torch.Tensor, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
        """The task's distillation loss, KL(teacher ‖ student) (per token for language models)."""
        return self.task.distill(logits, teacher, batch.inputs, temperature)

    def task_loss(self, batch: Batch, logits: torch.Tensor | None = None, inputs: dict | None = None) -> torch.Tensor:
        """The mean task loss of ``batch`` (against ``inputs`` if given, e.g. relabelled ones)."""
        inputs = inputs if inputs is not None else batch.inputs
        logits = logits if logits is not None else self.task.forward(self.model, inputs)
        return self.task.loss(logits, inputs).mean()


class FirstBatches:
    """The first ``n`` batches of a loader (a pass that stops part-way through an epoch)."""

    def __init__(self, loader: DataLoader, n: int):
        self.loader, self.n = loader, min(n, len(loader))

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.loader), self.n)


@dataclass
class Pair:
    """A D_f batch and a D_r batch taken in one step."""

    forget: Batch
    retain: Batch

    def to(self, device: torch.device) -> Pair:
        """Both batches on ``device``."""
        return Pair(self.forget.to(device), self.retain.to(device))

    def __len__(self) -> int:
        return len(self.forget) + len(self.retain)


class PairedLoader:
    """Each batch of the ``lead`` part (``forget`` or ``retain``) with the next batch of the other, which restarts
    (reshuffled) when it runs out."""

    def __init__(self, forget: DataLoader, retain: DataLoader, lead: str = "forget"):
        if lead not in ("forget", "retain"):
            raise ValueError(f"lead must be 'forget' or 'retain', got {lead!r}")
        self.forget, self.retain, self.lead = forget, retain, lead

    def __len__(self) -> int:
        return len(getattr(self, self.lead))

    def __iter__(self):
        leading, following = (self.forget, self.retain) if self.lead == "forget" else (self.retain, self.forget)
        others = iter(following)
        for batch in leading:
            try:
                other = next(others)
            except StopIteration:
                others = iter(following)
                other = next(others)
            yield Pair(batch, other) if self.lead == "forget" else Pair(other, batch)


def _coerce(key: str, value, default, source: str):
    """``value`` as the type of ``default`` (an int is a valid float); else a one-line error."""
    expected = type(default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return value
    raise UserError(f"{source}: {key}: expected {expected.__name__}, got {value!r}")


class Fit(Method):
    """Ordinary training with the task loss on one part of the data: the card's ``train`` recipe."""

    name = "fit"
    recipe = "train"
    time_limited = False
    part: ClassVar[str] = "train"

    def passes(self, epoch):
        return [Pass(self.part, self.loader(self.part))]

    def loss(self, batch, phase):
        return self.task_loss(batch)
