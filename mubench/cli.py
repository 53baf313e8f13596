"""The ``mubench`` command: ``run``, ``tune``, ``ulira``, ``sweep``, ``leaderboard``, ``train``, ``list``, ``data``,
``validate``, ``verify``, ``new`` and ``docs``.

Errors in what the user gave (a name, an argument, a card, a result, a cache entry
that fails verification) are one line on stderr and exit code 2; nothing is
written when a run fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import sys
from pathlib import Path

import yaml

from mubench.errors import UserError

log = logging.getLogger("mubench")


class Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line."""

    def error(self, message):
        self.exit(2, f"mubench: error: {message}\n")


def parse_method_args(text: str) -> dict:
    """``lr=0.01,epochs=3,lr_decay_epochs=[3,5]`` -> dict; values are read as YAML scalars/lists."""
    if not text:
        return {}
    args = {}
    for item in re.split(r",(?=\s*[A-Za-z_]\w*\s*=)", text):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", key):
            raise UserError(f"--method-args: expected key=value[,key=value...], got {item!r}")
        try:
            args[key] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--method-args: cannot read the value of {key}: {value!r}") from None
    return args


def ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"a deletion ratio lies strictly between 0 and 1 (0.05 is 5%), got {text}")
    return value


def verbosity(parser, default) -> None:
    """``-q`` and ``-v``, accepted before the subcommand and after it (where ``default`` is SUPPRESS, so that a flag
    given before it stands)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_const", dest="verbosity", const="quiet", default=default,
                       help="log warnings only")
    group.add_argument("-v", "--verbose", action="store_const", dest="verbosity", const="verbose", default=default,
                       help="log details too (where each plugin comes from, cache keys)")


class SubParser(Parser):
    """A subcommand's parser: it takes ``-q``/``-v`` too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        verbosity(self, argparse.SUPPRESS)


def build_parser() -> Parser:
    from mubench import __version__

    parser = Parser(prog="mubench", description="Benchmark machine unlearning methods (MU-Bench).",
                    epilog="Exit codes: 0 done; 1 a check found problems (data) or sweep cells failed; 2 a user error "
                           "(a name, an argument, a card, a result that does not validate); 130 interrupted (Ctrl-C); "
                           "143 terminated (SIGTERM). A failed or stopped run writes no result.")
    parser.add_argument("--version", action="version", version=f"mubench {__version__}")
    verbosity(parser, "normal")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=SubParser)

    def common(p):
        p.add_argument("--include-path", action="append", default=[], metavar="DIR", help="extra folder of task cards")
        p.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="a local copy of the task's dataset (save_to_disk folder or data files) instead of the hub")
        p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
        p.add_argument("--precision", default="auto", help="auto (bf16 on cuda), bf16 or fp32")
        p.add_argument("--original", metavar="SOURCE",
                       help="θ₀ instead of the card's: 'train' (trained here and cached), a checkpoint or a hub id")

    run = sub.add_parser("run", help="unlearn with a method on a task and write a result JSON")
    run.add_argument("--task", required=True)
    run.add_argument("--method", required=True)
    run.add_argument("--model", help="model family of the task (default: the card's)")
    run.add_argument("--deletion-ratio", type=ratio, help="share of the training split to delete (default: the card's)")
    seeds = run.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="run seed: the unlearning's randomness (data order, random labels, fresh "
                                                "models); not D_f, θ₀ or the attacks (default: the card's first)")
    seeds.add_argument("--seeds", type=seed_list, metavar="S,S,...", help="run every seed and print mean ± 95%% CI per metric")
    run.add_argument("--split-seed", type=int, help="another deletion set D_f (default: the card's deletion.split_seed)")
    originals = run.add_mutually_exclusive_group()
    originals.add_argument("--original-seed", type=int, help="another θ₀ trained here and cached apart (default: the card's train.seed)")
    originals.add_argument("--original-seeds", type=seed_list, metavar="S,...|A..B",
                           help="run on each of these θ₀s (Deep Unlearn's many initialisations), every run seed on each")
    run.add_argument("--reference", choices=["retrain"], help="add the gap to the retrained model (cached; computed when missing)")
    run.add_argument("--method-args", default="", metavar="K=V,...", help="override hyperparameters")
    run.add_argument("--tuned", type=Path, metavar="FILE",
                     help="the hyperparameters `mubench tune` chose (its .yaml); the result records the study")
    run.add_argument("--time-budget", default="retrain", help="'retrain' (default), 'none' or seconds")
    run.add_argument("--output-path", type=Path, default=Path("results"), metavar="DIR")
    run.add_argument("--save-model", action="store_true",
                     help="keep the unlearned weights (safetensors) beside the result, for `mubench verify`")
    run.add_argument("--peft", choices=["lora"], help="unlearn through LoRA adapters only (and the head)")
    lora = run.add_mutually_exclusive_group()
    lora.add_argument("--lora-rank", type=int, metavar="R", help="LoRA rank (default 8)")
    lora.add_argument("--lora-fraction", type=float, metavar="F",
                      help="pick the LoRA rank that trains this share of the parameters, e.g. 0.1")
    run.add_argument("--lora-alpha", type=float, metavar="A", help="LoRA alpha (default: the rank)")
    common(run)

    tune = sub.add_parser("tune", help="search a method's hyperparameters with Optuna on a validation split carved from D_r",
                          description="Deep Unlearn's search: each trial unlearns with proposed hyperparameters and is judged "
                                      "against the retrained model on a share of D_r held out (never D_test). The study is "
                                      "stored in SQLite under --study-dir: rerun to resume.")
    tune.add_argument("--task", required=True)
    tune.add_argument("--method", required=True)
    tune.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study should hold")
    tune.add_argument("--objective", default="deep_unlearn", metavar="NAME",
                      help="deep_unlearn (default: the gaps to retrain on D_r, D_f and validation, and 1 - MIA "
                           "indiscernibility, a Pareto front), or one scalar: deep_unlearn_score, gap.<part>_<metric>, <part>_<metric>")
    tune.add_argument("--sampler", choices=["nsga2", "nsga3", "tpe", "random"],
                      help="default: nsga2 for deep_unlearn, tpe for a scalar")
    tune.add_argument("--sampler-seed", type=int, default=0, metavar="S")
    tune.add_argument("--validation", type=ratio, default=0.1, metavar="F", help="share of D_r held out to judge trials (default 0.1)")
    tune.add_argument("--study-dir", type=Path, default=Path("tuning"), metavar="DIR",
                      help="where the study (.db) and the chosen values (.yaml) go (default: tuning)")
    studied_run(tune, seed="the trials' run seed", method_args="hyperparameters to keep fixed (not searched)")
    common(tune)

    attack = sub.add_parser("ulira", help="U-LiRA: the per-sample attack of Deep Unlearn over shadow originals (0.5 is perfect)",
                            description="Shadow originals on complementary halves of the training split (cached for every "
                                        "method), each unlearned with the method on the part of D_f it holds; a likelihood-ratio "
                                        "test per example tells unlearned from never-seen, scored on each held-out shadow.")
    attack.add_argument("--task", required=True)
    attack.add_argument("--method", required=True)
    attack.add_argument("--shadows", type=int, default=16, metavar="N", help="shadow originals, an even number (default 16)")
    studied_run(attack, seed="the shadows' unlearning seed", method_args="override hyperparameters")
    attack.add_argument("--tuned", type=Path, metavar="FILE", help="the hyperparameters `mubench tune` chose")
    attack.add_argument("--output-path", type=Path, default=Path("results"), metavar="DIR")
    attack.add_argument("--executor", choices=["local", "ray"], default="local", help="run the shadows here or as Ray tasks")
    attack.add_argument("--address", help="the Ray cluster to join (default: start a local one)")
    common(attack)

    train = sub.add_parser("train", help="train and cache a task's original model")
    train.add_argument("--task", required=True)
    train.add_argument("--model")
    train.add_argument("--force", action="store_true", help="retrain even if a cached model exists")
    train.add_argument("--original-seed", type=int, help="train θ₀ with this seed (default: the card's train.seed)")
    common(train)

    ls = sub.add_parser("list", help="list tasks, methods or models")
    ls.add_argument("what", choices=["tasks", "methods", "models", "metrics"])
    ls.add_argument("--task", help="only this task's models")
    ls.add_argument("--include-path", action="append", default=[], metavar="DIR")
    ls.epilog = ("models: parameter counts come from each model's config (no weights are loaded), from the hub or, where "
                 "it does not answer within 2 s, from the local cache; unknown* when the config is neither cached nor reachable.")

    data = sub.add_parser("data", help="load a task's dataset and check it against its card")
    data.add_argument("task")
    data.add_argument("--examples", type=int, default=2, metavar="N", help="decoded training examples to show (default 2)")
    data.add_argument("--include-path", action="append", default=[], metavar="DIR")
    data.add_argument("--data-dir", type=Path, metavar="DIR", help="a local copy of the dataset instead of the card's source")

    validate = sub.add_parser("validate", help="check task cards (.yaml) or results (.json): shape and meaning")
    validate.add_argument("files", nargs="+", type=Path)
    validate.add_argument("--include-path", action="append", default=[], metavar="DIR")
    validate.add_argument("--no-data", action="store_true",
                          help="do not read the task's data to re-draw the deletion set (checks that need it are skipped)")
    validate.add_argument("--data-dir", type=Path, metavar="DIR", help="a local copy of the task's dataset")

    sweep = sub.add_parser("sweep", help="run every task × model × method × ratio × seed of a sweep, resumably",
                           description="A sweep file (YAML: tasks, models, methods, ratios, seeds, method_args, reference, "
                                       "output, device, executor, ray) or the same keys as flags, which replace the file's.")
    sweep.add_argument("action", choices=["plan", "run"], help="plan: list the cells and what is done; run: run what is missing")
    sweep.add_argument("file", nargs="?", type=Path, help="the sweep file")
    sweep.add_argument("--tasks", type=names, metavar="T,...")
    sweep.add_argument("--models", type=names, metavar="M,...", help="model families (default: each task's default)")
    sweep.add_argument("--methods", type=lambda text: text if text == "all" else names(text), metavar="M,...|all")
    sweep.add_argument("--ratios", type=axis(float), metavar="R,...|all", help="deletion ratios, or 'all' of each card's")
    sweep.add_argument("--seeds", type=axis(int), metavar="S,...|all", help="run seeds, or 'all' of each card's")
    sweep.add_argument("--original-seeds", type=seed_list, metavar="S,...|A..B", help="θ₀ seeds: every cell on each of these θ₀s")
    sweep.add_argument("--reference", choices=["retrain"], help="retrain first and add every cell's gap to it")
    sweep.add_argument("--output-path", dest="output", metavar="DIR", help="where results go (default: results)")
    sweep.add_argument("--executor", choices=["local", "ray"], help="local (default: in this process) or ray")
    sweep.add_argument("--address", help="the Ray cluster to join (default: start a local one)")
    sweep.add_argument("--device", help="auto, cpu or cuda")
    sweep.add_argument("--precision", help="auto, bf16 or fp32")
    sweep.add_argument("--include-path", dest="include_paths", action="append", metavar="DIR", help="extra folder of task cards")
    sweep.add_argument("--data-dir", help="a local copy of the tasks' dataset")
    sweep.add_argument("--leaderboard", metavar="DIR", help="after the run, build the leaderboard of the output folder into DIR")

    new = sub.add_parser("new", help="write a plugin package (a task or a method) that installs and runs as written",
                         description="Writes mubench-<name>/ with a pyproject (the entry point), the plugin module, a test and a "
                                     "README; a task also gets a card and a loader. Install it with pip install -e and edit.")
    new.add_argument("kind", choices=["task", "method"])
    new.add_argument("name", help="lower-case letters, digits and _ (it names the Python package mubench_<name>)")
    new.add_argument("--dir", type=Path, default=Path("."), metavar="DIR", help="where the package folder goes (default: here)")

    docs = sub.add_parser("docs", help="write the plugin API reference (Markdown, from the docstrings)")
    docs.add_argument("--out", type=Path, default=Path("docs/api"), metavar="DIR", help="where the pages go (default: docs/api)")

    board = sub.add_parser("leaderboard", help="aggregate result files into a ranked leaderboard (JSON and a static page)")
    board.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="folders of result files (searched recursively)")
    board.add_argument("--out", type=Path, default=Path("site"), metavar="DIR",
                       help="where leaderboard.json and index.html go (default: site)")
    board.add_argument("--no-data", action="store_true", help="do not read the tasks' data to re-draw each deletion set")
    board.add_argument("--include-path", action="append", default=[], metavar="DIR")

    verify = sub.add_parser("verify", help="re-evaluate a result's saved unlearned weights and confirm its metrics")
    verify.add_argument("result", type=Path)
    verify.add_argument("--tolerance", type=float, default=1e-6, metavar="T",
                        help="largest accepted absolute difference per metric (default 1e-6)")
    verify.add_argument("--include-path", action="append", default=[], metavar="DIR")
    verify.add_argument("--data-dir", type=Path, metavar="DIR", help="a local copy of the task's dataset")
    verify.add_argument("--device", default="cpu", help="cpu (default) or cuda; the result's own device to verify exactly")
    return parser


def studied_run(parser, seed: str, method_args: str) -> None:
    """The options of the run that ``tune`` and ``ulira`` repeat: its model, ratio, seed, fixed arguments and budget."""
    parser.add_argument("--model")
    parser.add_argument("--deletion-ratio", type=ratio)
    parser.add_argument("--seed", type=int, help=f"{seed} (default: the card's first)")
    parser.add_argument("--method-args", default="", metavar="K=V,...", help=method_args)
    parser.add_argument("--time-budget", default="retrain", help="'retrain' (default), 'none' or seconds")


def names(text: str) -> list[str]:
    """``a,b,c``: a list of names."""
    return [part.strip() for part in text.split(",") if part.strip()]


def axis(kind):
    """A sweep axis: ``all`` or values of ``kind`` separated by commas."""
    def parse(text: str):
        if text == "all":
            return text
        try:
            return [kind(part) for part in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected 'all' or {kind.__name__} values separated by commas, got {text!r}") from None
    return parse


def lora_spec(args):
    """The LoRA setting of ``run``'s arguments, or None without ``--peft``."""
    from mubench.lora import LoraSpec

    given = args.lora_rank is not None or args.lora_fraction is not None or args.lora_alpha is not None
    if args.peft is None:
        if given:
            raise UserError("--lora-rank, --lora-fraction and --lora-alpha need --peft lora")
        return None
    rank = 8 if args.lora_rank is None and args.lora_fraction is None else args.lora_rank
    return LoraSpec(rank=rank, fraction=args.lora_fraction, alpha=args.lora_alpha)


def seed_list(text: str) -> list[int]:
    """``--seeds 0,1,2`` or ``0..9`` (both ends included), or both joined by commas: distinct integers."""
    seeds = []
    try:
        for part in text.split(","):
            low, dots, high = part.partition("..")
            seeds += list(range(int(low), int(high) + 1)) if dots else [int(part)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas or a range such as 0..9, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty range")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"a seed is given twice in {text!r}")
    return seeds


def cmd_run(args) -> int:
    from mubench.api.registry import Registry
    from mubench.harness import RunConfig, run
    from mubench.results import seeds_table, summary_table

    registry = Registry(args.include_path)
    config = RunConfig(task=args.task, method=args.method, model=args.model, deletion_ratio=args.deletion_ratio,
                       method_args=parse_method_args(args.method_args), device=args.device,
                       precision=args.precision, time_budget=args.time_budget, output_path=args.output_path,
                       include_paths=args.include_path, data_dir=args.data_dir, lora=lora_spec(args),
                       original=args.original, split_seed=args.split_seed, original_seed=args.original_seed,
                       reference=args.reference, save_model=args.save_model, tuned=args.tuned)
    several = bool(args.seeds or args.original_seeds)
    results = []
    for original_seed in args.original_seeds or [args.original_seed]:
        for seed in args.seeds or [args.seed]:
            existing = set(args.output_path.glob("*.json")) if args.output_path.is_dir() else set()
            result, path = run(dataclasses.replace(config, seed=seed, original_seed=original_seed), registry)
            results.append(result)
            if not several:
                print(summary_table(result))
            print(f"result: {path}" + (" (replaced an earlier result of the same configuration)" if path in existing else ""))
    if several:
        print(seeds_table(results))
    return 0


def cmd_tune(args) -> int:
    from mubench.harness import RunConfig
    from mubench.tune import TuneConfig, trials_table, tune

    run = RunConfig(task=args.task, method=args.method, model=args.model, deletion_ratio=args.deletion_ratio, seed=args.seed,
                    method_args=parse_method_args(args.method_args), device=args.device, precision=args.precision,
                    time_budget=args.time_budget, include_paths=args.include_path, data_dir=args.data_dir, original=args.original)
    tuned = tune(TuneConfig(run, args.trials, args.objective, args.sampler, args.sampler_seed, args.validation, args.study_dir))
    print(trials_table(tuned))
    return 0


def cmd_ulira(args) -> int:
    from mubench.harness import RunConfig
    from mubench.ulira import UliraConfig, ulira

    run = RunConfig(task=args.task, method=args.method, model=args.model, deletion_ratio=args.deletion_ratio, seed=args.seed,
                    method_args=parse_method_args(args.method_args), device=args.device, precision=args.precision,
                    time_budget=args.time_budget, output_path=args.output_path, include_paths=args.include_path,
                    data_dir=args.data_dir, original=args.original, tuned=args.tuned)
    result, path = ulira(UliraConfig(run, args.shadows, args.executor, {"address": args.address} if args.address else {}))
    score = result["ulira"]["balanced_accuracy"]
    interval = f" ± {score['ci95']:.3f}" if score["ci95"] is not None else ""
    print(f"U-LiRA {result['method']} on {result['task']}: balanced accuracy {score['mean']:.3f}{interval} "
          f"({result['config']['shadows']} shadows, {result['split']['n_targets']} targets; 0.5 is perfect unlearning)")
    print(f"result: {path}")
    return 0


def cmd_train(args) -> int:
    from mubench.api.registry import Registry
    from mubench.harness import Prepared
    from mubench.loop import resolve_device, resolve_precision

    prepared = Prepared(Registry(args.include_path), args.task, args.model, None, args.data_dir, args.original,
                        original_seed=args.original_seed)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    prepared.load()
    original = prepared.original(device, precision, retrain_cache=args.force)
    metrics = original.sidecar.get("metrics", {})
    print(f"{prepared.card.name}/{prepared.family.name}: {original.source}")
    for key, value in metrics.items():
        print(f"  {key}: {'n/a' if value is None else f'{value:.4f}'}")
    return 0


def cmd_list(args) -> int:
    from mubench.api.registry import Registry

    registry = Registry(args.include_path)
    if args.what == "methods":
        print(f"{'method':<10} {'knowledge':<15} {'corruption':<10} {'retention':<20} {'parameters':<16} what it does")
        for name, method in sorted(registry.catalog.methods.items()):
            facets = method["taxonomy"] or dict.fromkeys(("knowledge", "corruption", "retention", "parameters"), "-")
            print(f"{name:<10} {facets['knowledge']:<15} {facets['corruption']:<10} {facets['retention']:<20} "
                  f"{facets['parameters']:<16} {method['summary']}")
    elif args.what == "metrics":
        for name, metric in sorted(registry.catalog.metrics.items()):
            direction = "higher" if metric["higher_is_better"] else "lower"
            print(f"{name:<26} {metric['scope']:<7} {direction + ' is better':<17} forgotten: {metric['forgotten']:<8} "
                  f"needs: {', '.join(metric['needs']):<22} {metric['description']}")
    elif args.what == "tasks":
        for name in sorted(registry.card_paths):
            try:
                card = registry.card(name)
            except UserError as e:
                log.warning("task '%s' left out: %s", name, e)
                continue
            print(f"{name:<16} {card.data['modality']:<10} {card.task_type:<22} models: {', '.join(card.models)}")
    else:
        names = [registry.card(args.task).name] if args.task else sorted(registry.card_paths)
        hub = "the hub" if hub_reachable() else "the cache"
        if hub == "the cache":
            log.info("the hub does not answer: parameter counts come from the configs in the local cache")
        print(f"{'task':<16} {'model':<26} {'parameters':>12}  {'counted from':<13} {'architecture':<13} {'backbone':<52} original")
        for name in names:
            card = registry.card(name)
            for model, spec in card.models.items():
                default = " (default)" if model == card.default_model else ""
                backbone = spec.get("params", {}).get("pretrained", "-")
                count = parameter_count(registry, card, model)
                source = "-" if count == "unknown*" else f"config, {hub[4:]}" if backbone != "-" else "built here"
                print(f"{name:<16} {model + default:<26} {count:>12}  {source:<13} {spec['architecture']:<13} {backbone:<52} "
                      f"{spec['original']}")
    return 0


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face hub answers within ``timeout`` seconds; where it does not, this process goes offline
    (``HF_HUB_OFFLINE``), so that configs are read from the cache instead of being retried for minutes."""
    import os
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    address = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((address.hostname, address.port or (443 if address.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        return False


def parameter_count(registry, card, model: str) -> str:
    """The family's parameter count with the task's head (e.g. ``86.4M``), or ``unknown*``."""
    from mubench.harness import Prepared

    try:
        count = sum(p.numel() for p in Prepared(registry, card.name, model, None).skeleton().parameters())
    except UserError as e:
        log.debug("%s/%s: %s", card.name, model, e)
        return "unknown*"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit}"
    return str(count)


def cmd_data(args) -> int:
    from mubench.api.registry import Registry
    from mubench.datacheck import check_task_data

    report = check_task_data(Registry(args.include_path), args.task, args.data_dir, args.examples)
    print(report.text)
    for problem in report.problems:
        print(f"mubench: problem: {problem}", file=sys.stderr)
    return 1 if report.problems else 0


def cmd_validate(args) -> int:
    from mubench.api.registry import Registry

    registry, drawn = Registry(args.include_path), {}
    failed = 0
    for path in args.files:
        try:
            if path.suffix in (".yaml", ".yml"):
                name, problems = registry.card_problems(path)
                for problem in problems:
                    print(f"mubench: invalid: {problem}", file=sys.stderr)
                if problems:
                    failed += 1
                    continue
                print(f"{path}: ok (task card '{name}')")
            else:
                from mubench.recheck import recheck  # results are re-checked against the live plugins

                skipped = recheck(path, registry, read_data=not args.no_data, data_dir=args.data_dir, drawn=drawn)
                print(f"{path}: ok (result" + (f"; not re-checked: {skipped})" if skipped else ")"))
        except UserError as e:
            print(f"mubench: invalid: {e}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def cmd_sweep(args) -> int:
    from mubench.api.registry import Registry
    from mubench.sweep import Sweep, attack_all, cells, execute, plan_table, summary

    flags = {key: getattr(args, key) for key in ("tasks", "models", "methods", "ratios", "seeds", "original_seeds", "reference", "output",
                                                 "executor", "device", "precision", "include_paths", "data_dir")}
    if args.address:
        flags["ray"] = {"address": args.address}
    if args.leaderboard:
        flags["leaderboard"] = {"out": args.leaderboard}
    sweep = Sweep.read(args.file, flags)
    registry = Registry(sweep.include_paths)
    loaded = {}
    planned = cells(sweep, registry, loaded)
    if args.action == "plan":
        print(plan_table(planned))
        return 0
    outcomes = execute(sweep, planned, registry, loaded)
    print(summary(outcomes))
    if sweep.ulira:
        attacks = attack_all(sweep, planned, registry)
        print("U-LiRA " + summary(attacks))
        outcomes += attacks
    if sweep.leaderboard:
        print_leaderboard([Path(folder) for folder in sweep.leaderboard.get("from", [sweep.output])], Path(sweep.leaderboard["out"]),
                          registry, read_data=True)
    return 1 if any(outcome.state == "failed" for outcome in outcomes) else 0


def print_leaderboard(folders: list[Path], out: Path, registry, read_data: bool) -> None:
    """Build the leaderboard of ``folders`` into ``out``; say what was skipped and where the page is."""
    from mubench.leaderboard import build, collect, write_site

    board = build(*collect(folders, registry, read_data=read_data), registry)
    for problem in board["rejected"]:
        print(f"mubench: skipped: {problem['error']}", file=sys.stderr)
    index = write_site(board, out, registry)
    rows = sum(len(entry["rows"]) for entry in board["tasks"].values())
    print(f"leaderboard: {board['n_results']} results in {rows} rows over {len(board['tasks'])} tasks"
          + (f"; {len(board['rejected'])} files skipped" if board["rejected"] else "") + f"\npage: {index}")


def cmd_leaderboard(args) -> int:
    from mubench.api.registry import Registry

    print_leaderboard(args.folders, args.out, Registry(args.include_path), read_data=not args.no_data)
    return 0


def cmd_new(args) -> int:
    from mubench.scaffold import write_plugin

    root = write_plugin(args.kind, args.name, args.dir)
    print(f"wrote {root}\nnext: pip install -e '{root}[test]' && pytest {root}")
    return 0


def cmd_docs(args) -> int:
    from mubench.apidoc import write_reference

    written = write_reference(args.out)
    print(f"wrote {len(written)} pages to {args.out} (start at {args.out / 'index.md'})")
    return 0


def cmd_verify(args) -> int:
    from mubench.api.registry import Registry
    from mubench.recheck import verify

    report = verify(args.result, Registry(args.include_path), args.tolerance, args.device, args.data_dir)
    print(report.table)
    if report.mismatched:
        raise UserError(f"{args.result}: does not verify: {', '.join(report.mismatched)} differ from the re-evaluation "
                        f"by more than {args.tolerance:g}")
    print(f"{args.result}: verified ({len(report.compared)} metrics within {args.tolerance:g})")
    return 0


COMMANDS = {"run": cmd_run, "tune": cmd_tune, "ulira": cmd_ulira, "train": cmd_train,
            "list": cmd_list, "data": cmd_data, "validate": cmd_validate, "verify": cmd_verify,
            "sweep": cmd_sweep, "leaderboard": cmd_leaderboard, "new": cmd_new, "docs": cmd_docs}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as an interrupt does (no result written)."""


def terminate(signum, frame):
    raise Terminated


def forget_unhandled_interrupt() -> None:
    """Keep exit code 130 under ``python -m mubench`` too: CPython marks an interrupt that landed inside exec/eval of
    a string (a dataclass being made during an import) as unhandled, and ``python -m`` then ends the process by SIGINT
    after main has returned; running a string through exec clears that mark."""
    exec("")


LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s mubench: %(message)s", datefmt="%H:%M:%S"))
    log.addHandler(handler)  # mubench's own messages; libraries keep their own logging
    log.propagate = False  # a library that configures the root logger (absl, via rouge-score) must not print them twice
    log.setLevel(LEVELS[args.verbosity])
    signal.signal(signal.SIGTERM, terminate)
    try:
        return COMMANDS[args.command](args)
    except UserError as e:
        print(f"mubench: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("mubench: terminated; no result written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        forget_unhandled_interrupt()
        print("mubench: interrupted; no result written", file=sys.stderr)
        return 130
