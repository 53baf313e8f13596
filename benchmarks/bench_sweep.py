"""A sweep against the same cells as separate ``mubench run`` calls, on digits.

    python benchmarks/bench_sweep.py [--rounds 3]

The grid: 3 methods × 3 deletion ratios × 3 seeds (27 cells). θ₀ is trained once
before timing and both sides start each round from a copy of that cache (so each
side evaluates θ₀ itself); each side is one or more ``mubench`` processes started
the same way, and both produce the same result files, which are compared. Per
round it prints the wall-time ratio separate / sweep and the fraction of the
sweep's wall time spent outside unlearning (1 − Σ unlearn_s / wall; target under
20%), then the median and spread over rounds. Sides alternate which goes first.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import ratio_line  # noqa: E402

METHODS, RATIOS, SEEDS = ("finetune", "neggrad", "scrub"), ("0.01", "0.05", "0.1"), ("42", "87", "21")


def mubench(home: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "mubench", "-q", *args], check=True, env={**os.environ, "MUBENCH_HOME": str(home)},
                   stdout=subprocess.DEVNULL)


def separate(home: Path, out: Path) -> float:
    start = time.perf_counter()
    for method in METHODS:
        for ratio in RATIOS:
            for seed in SEEDS:
                mubench(home, "run", "--task", "digits", "--method", method, "--deletion-ratio", ratio, "--seed", seed,
                        "--output-path", str(out))
    return time.perf_counter() - start


def swept(home: Path, out: Path) -> float:
    start = time.perf_counter()
    mubench(home, "sweep", "run", "--tasks", "digits", "--methods", ",".join(METHODS), "--ratios", ",".join(RATIOS),
            "--seeds", ",".join(SEEDS), "--output-path", str(out))
    return time.perf_counter() - start


def results(out: Path) -> dict:
    return {path.name: json.loads(path.read_text()) for path in sorted(out.glob("*.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    trained = root / "trained"
    mubench(trained, "train", "--task", "digits")
    ratios, outside = [], []
    try:
        for k in range(args.rounds):
            walls, outputs = {}, {}
            for side in (("separate", "sweep") if k % 2 == 0 else ("sweep", "separate")):
                home, out = root / f"{side}-{k}-home", root / f"{side}-{k}-out"
                shutil.copytree(trained, home)
                walls[side] = (separate if side == "separate" else swept)(home, out)
                outputs[side] = results(out)
            a, b = outputs["separate"], outputs["sweep"]
            assert a.keys() == b.keys() and len(a) == 27, "both sides must make the same 27 result files"
            assert all(a[name]["results"] == b[name]["results"] for name in a), "both sides must give the same numbers"
            spent = {key: sum(result["times"][key] for result in b.values()) for key in ("unlearn_s", "eval_s", "original_s", "total_s")}
            wall = walls["sweep"]
            ratios.append(walls["separate"] / wall)
            outside.append(1 - spent["unlearn_s"] / wall)
            print(f"round {k + 1}: separate {walls['separate']:.1f} s, sweep {wall:.1f} s, ratio {ratios[-1]:.2f}; "
                  f"unlearning {spent['unlearn_s']:.1f} s, outside unlearning {outside[-1]:.1%} of the sweep: "
                  f"process start, imports, planning and writing results {wall - spent['total_s']:.1f} s, "
                  f"evaluation (θ₀ once per deletion set, every unlearned model) {spent['eval_s']:.1f} s, "
                  f"θ₀ loading {spent['original_s']:.1f} s, "
                  f"the rest {spent['total_s'] - spent['unlearn_s'] - spent['eval_s'] - spent['original_s']:.1f} s")
        print(f"separate runs / sweep wall time: median {statistics.median(ratios):.2f} (spread {min(ratios):.2f}–{max(ratios):.2f})")
        print(ratio_line("sweep time outside unlearning", outside, 0.20, "(fraction of the sweep's wall time)"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
