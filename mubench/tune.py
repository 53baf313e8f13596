"""Hyperparameter search, Deep Unlearn's way: Optuna over the search space a method declares beside its defaults.

Each trial is one run of the method with hyperparameters the sampler proposes, judged
on a validation split carved from D_r (:meth:`mubench.harness.Prepared.held_out`), never
on D_test: θ₀ and the retrained reference are trained without the held-out rows (and
cached apart). The default objective is Deep Unlearn's four, minimised together with
NSGA-II: the gaps to the retrained model in the task metric on D_r, D_f and the held-out
split, and 1 − the loss attack's indiscernibility. A scalar objective (``deep_unlearn_score``,
``gap.<metric>`` or a metric of the unlearned model such as ``test_acc``) is searched with
TPE. The study lives in SQLite beside the chosen values, so a search resumes where it
stopped; the total number of finished trials never passes ``--trials``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from mubench import __version__
from mubench.api.method import Choice
from mubench.api.registry import Registry
from mubench.errors import UserError
from mubench.evaluation import EVAL_PARTS, describe
from mubench.harness import RunConfig, execute, resolve, retrained_reference
from mubench.results import finite, reference_block

log = logging.getLogger("mubench")

PARETO = "deep_unlearn"  # the four objectives of Deep Unlearn, minimised together
PARETO_PARTS = ("gap_retain", "gap_forget", "gap_validation", "mia_discernibility")
SAMPLERS = ("nsga2", "nsga3", "tpe", "random")


@dataclass
class TuneConfig:
    """What ``mubench tune`` takes: the run to tune (its ``method_args`` stay fixed), the trials and the objective."""

    run: RunConfig
    trials: int
    objective: str = PARETO
    sampler: str | None = None  # None: nsga2 for the Pareto objective, tpe for a scalar one
    sampler_seed: int = 0
    validation: float = 0.1
    study_dir: Path = Path("tuning")


@dataclass
class Tuned:
    """A finished search: the study, the trial chosen and the file its values were written to."""

    study: object
    chosen: object
    path: Path
    ran: int


def suggest(trial, key: str, knob, default):
    """The sampler's value for one knob of a method's search space, of the default's type."""
    if isinstance(knob, Choice):
        return trial.suggest_categorical(key, list(knob.options))
    if isinstance(default, int):
        return trial.suggest_int(key, int(knob.low), int(knob.high), log=knob.log)
    return trial.suggest_float(key, knob.low, knob.high, log=knob.log)


def scores(result: dict, retrained: dict, metric: str) -> dict:
    """What a trial is judged on: Deep Unlearn's four parts, its score and every gap (the held-out split is ``test``)."""
    block = reference_block(result, retrained, metric)
    gap, unlearned = block["gap"], result["results"]["unlearned"]
    parts = {"gap_retain": gap.get(f"retain_{metric}"), "gap_forget": gap.get(f"forget_{metric}"),
             "gap_validation": gap.get(f"test_{metric}"),
             "mia_discernibility": 1 - unlearned["forget_mia_loss_indiscernibility"]
             if unlearned.get("forget_mia_loss_indiscernibility") is not None else None}
    return parts | {"deep_unlearn_score": block["deep_unlearn_score"]} | {f"gap.{key}": value for key, value in gap.items()}


def direction(objective: str, metrics: dict) -> str:
    """``minimize`` or ``maximize`` for a scalar objective, from what it names (``metrics``: the run's metrics as a
    result describes them)."""
    if objective == "deep_unlearn_score" or objective.startswith("gap."):
        return "minimize"
    part, _, name = objective.partition("_")
    meaning = metrics.get(name)
    if meaning is None or part not in EVAL_PARTS:
        known = ", ".join(["deep_unlearn", "deep_unlearn_score", "gap.<part>_<metric>", "<part>_<metric>"])
        raise UserError(f"--objective {objective!r}: expected one of {known} (parts: {', '.join(EVAL_PARTS)}; "
                        f"metrics: {', '.join(metrics)})")
    if part == "forget":
        if meaning["forgotten"] not in ("lower", "higher"):
            raise UserError(f"--objective {objective!r}: forgetting moves it towards {meaning['forgotten']}, not up or down; "
                            f"use gap.{objective}")
        return "minimize" if meaning["forgotten"] == "lower" else "maximize"
    return "maximize" if meaning["higher_is_better"] else "minimize"


def study_name(plan) -> str:
    """``<task>__<model>__<method>__df<percent>``: one study per cell a search may tune."""
    prepared = plan.prepared
    deleted = f"df{prepared.ratio * 100:g}" if not prepared.classwise else "classes"
    return f"{prepared.card.name}__{prepared.family.name}__{plan.method_cls.name}__{deleted}"


def sampler_for(name: str, seed: int, trials: int):
    """The Optuna sampler ``name``, seeded; NSGA's population is sized to the trials (a tenth, 4 to 50)."""
    import optuna

    population = max(4, min(50, trials // 10))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=population)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def finished(study) -> list:
    """The study's trials that finished with values (the ones ``--trials`` counts)."""
    import optuna

    return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]


def by_score(trial) -> tuple:
    """A finished trial's order: Deep Unlearn's score (lower first; none last), then its number."""
    score = trial.user_attrs["scores"].get("deep_unlearn_score")
    return math.inf if score is None else score, trial.number


def tune(config: TuneConfig, registry: Registry | None = None) -> Tuned:
    """Run (or resume) the study of ``config`` and write the chosen values as a ``methods.<name>`` block."""
    import optuna

    if config.trials < 1:
        raise UserError(f"--trials {config.trials}: expected at least one trial")
    sampler_name = config.sampler or ("nsga2" if config.objective == PARETO else "tpe")
    if sampler_name not in SAMPLERS:
        raise UserError(f"--sampler {sampler_name!r}: expected one of {', '.join(SAMPLERS)}")
    if config.objective == PARETO and sampler_name == "tpe":
        log.info("tpe searches a Pareto front too (MOTPE)")
    registry = registry or Registry(config.run.include_paths)
    base = dataclasses.replace(config.run, validation=config.validation, reference=None, save_model=False, tuned=None)
    loaded = {}
    plan = resolve(base, registry, loaded)
    if plan.method_cls.name in ("retrain", "original"):
        raise UserError(f"method '{plan.method_cls.name}' is a reference: it has nothing to tune")
    knobs = {key: knob for key, knob in plan.method_cls.knobs().items() if key not in config.run.method_args}
    if not knobs:
        raise UserError(f"method '{plan.method_cls.name}' declares no search space left to tune"
                        + (" (--method-args fixes all of it)" if plan.method_cls.knobs() else ""))
    metric = plan.prepared.task.metric
    name = study_name(plan)
    config.study_dir.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{(config.study_dir / f'{name}.db').absolute()}"
    objectives = list(PARETO_PARTS) if config.objective == PARETO else [config.objective]
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def trial_result(trial) -> tuple[dict, dict]:
        args = {key: suggest(trial, key, knob, plan.method_cls.defaults[key]) for key, knob in knobs.items()}
        trial_plan = resolve(dataclasses.replace(base, method_args=config.run.method_args | args), registry, loaded)
        result, _, _ = execute(trial_plan)
        retrained = retrained_reference(result, trial_plan, write=False)
        return result, scores(result, retrained, metric)

    def objective(trial):
        result, judged = trial_result(trial)
        trial.set_user_attr("scores", finite(judged))
        trial.set_user_attr("metrics", finite(result["results"]["unlearned"]))
        trial.set_user_attr("unlearn_s", result["times"]["unlearn_s"])
        values = [judged.get(key) if key in judged else result["results"]["unlearned"].get(key) for key in objectives]
        if any(v is None or not math.isfinite(v) for v in values):
            raise optuna.TrialPruned(f"objective not finite: {dict(zip(objectives, values))}")  # a diverged run: no values
        return values if len(values) > 1 else values[0]

    directions = (["minimize"] * len(PARETO_PARTS) if config.objective == PARETO
                  else [direction(config.objective, describe(plan.evaluator.metrics))])
    try:
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                    sampler=sampler_for(sampler_name, config.sampler_seed, config.trials))
    except ValueError as e:
        raise UserError(f"study {name} in {storage}: {e}") from None
    if [d.name.lower() for d in study.directions] != directions or study.user_attrs.get("objective", config.objective) != config.objective:
        raise UserError(f"study {name} in {storage} was made with objective {study.user_attrs.get('objective')!r}; "
                        f"use another --study-dir for --objective {config.objective!r}")
    study.set_user_attr("objective", config.objective)
    study.set_user_attr("validation", config.validation)
    before = len(finished(study))
    if before < config.trials:
        study.optimize(objective, n_trials=config.trials - before, catch=(),
                       callbacks=[optuna.study.MaxTrialsCallback(config.trials, states=(optuna.trial.TrialState.COMPLETE,))])
    if not study.best_trials:
        raise UserError(f"study {name}: no trial finished with finite objectives (every run diverged?)")
    chosen = min(study.best_trials, key=by_score)
    path = config.study_dir / f"{name}.yaml"
    write_tuned(path, plan, chosen, study, config, sampler_name, storage)
    return Tuned(study, chosen, path, len(finished(study)) - before)


def write_tuned(path: Path, plan, chosen, study, config: TuneConfig, sampler: str, storage: str) -> None:
    """The chosen values as a ``methods.<name>`` block, and the study they came from (what a result run with them records)."""
    method = plan.method_cls.name
    block = {"methods": {method: dict(chosen.params) | dict(config.run.method_args)},
             "study": {"method": method, "task": plan.prepared.card.name, "model": plan.prepared.family.name,
                       "deletion_ratio": plan.prepared.ratio, "seed": plan.seed, "name": study.study_name,
                       "storage": Path(storage.removeprefix("sqlite:///")).name, "objective": config.objective,
                       "sampler": sampler, "sampler_seed": config.sampler_seed, "validation": config.validation,
                       "trials": len(finished(study)),
                       "trial": chosen.number, "values": chosen.user_attrs["scores"],
                       "pareto_trials": sorted(t.number for t in study.best_trials),
                       "mubench_version": __version__,
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
    header = (f"# Chosen by `mubench tune --task {plan.prepared.card.name} --method {method} --trials {config.trials}"
              f" --objective {config.objective}`:\n# trial {chosen.number} of study {study.study_name}, judged on "
              f"{config.validation:g} of D_r held out (never D_test). Use it with `mubench run --tuned {path.name}`.\n")
    path.write_text(header + yaml.safe_dump(block, sort_keys=False))


def trials_table(tuned: Tuned, top: int = 10) -> str:
    """The best finished trials by Deep Unlearn's score (lower is better): their values and what they scored."""
    done = sorted(finished(tuned.study), key=by_score)
    pareto = {t.number for t in tuned.study.best_trials}
    lines = [f"{'trial':>5}  {'score':>7}  {'D_r gap':>7}  {'D_f gap':>7}  {'val gap':>7}  {'1-MIA':>6}  hyperparameters"]
    for t in done[:top]:
        s = t.user_attrs["scores"]
        cells = [s.get(k) for k in ("deep_unlearn_score", *PARETO_PARTS)]
        text = "  ".join(f"{v:>7.4f}" if v is not None else f"{'n/a':>7}" for v in cells)
        mark = "*" if t.number in pareto else " "
        lines.append(f"{t.number:>4}{mark}  {text}  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                             for k, v in sorted(t.params.items())))
    lines.append(f"{len(done)} trials finished ({tuned.ran} this time); * on the Pareto front; "
                 f"chosen: trial {tuned.chosen.number} -> {tuned.path}")
    return "\n".join(lines)
