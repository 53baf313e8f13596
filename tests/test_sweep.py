"""Sweeps: the grid, resuming after SIGKILL at any moment with every cell present once, failures recorded, concurrent
sweeps, the Ray executor on a local cluster, and the cached evaluation of θ₀ they rely on."""
import json
import logging
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from mubench.files import read_json
from mubench.results import validate_result
from mubench.sweep import Journal

GRID = {"tasks": ["digits"], "methods": ["finetune", "neggrad"], "ratios": [0.01, 0.02], "seeds": [42], "reference": "retrain",
        "method_args": {"neggrad": {"lr": [0.00005, 0.0001]}}}
# retrain × 2 ratios, finetune × 2, neggrad × 2 ratios × 2 learning rates
N_CELLS = 8


def sweep_file(tmp_path, name="sweep.yaml", **changes):
    spec = GRID | {"output": str(tmp_path / "out")} | changes
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def journal(out):
    return Journal(out).read()


def finished_counts(out):
    counts = {}
    for event in journal(out):
        if event["event"] == "finished":
            counts[event["cell"]] = counts.get(event["cell"], 0) + 1
    return counts


def results_in(out):
    return sorted(p.name for p in out.glob("*.json"))


def test_a_sweep_plans_runs_and_resumes_with_the_numbers_of_separate_runs(cli, registry, tmp_path):
    from mubench.harness import RunConfig, run

    path = sweep_file(tmp_path)
    out = tmp_path / "out"
    plan = cli("sweep", "plan", path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-1] == f"{N_CELLS} cells: {N_CELLS} missing"
    assert plan.stdout.splitlines()[0].startswith("missing  digits__cnn__retrain__df1__seed42.json")  # references first

    done = cli("-q", "sweep", "run", path)
    assert done.returncode == 0, done.stderr
    assert f"sweep: {N_CELLS} cells: {N_CELLS} ran" in done.stdout
    names = results_in(out)
    assert len(names) == N_CELLS and len({n for n in names if "neggrad__df1" in n}) == 2  # the grid's two lrs kept apart
    assert finished_counts(out) == dict.fromkeys(names, 1)

    again = cli("-q", "sweep", "run", path, "--leaderboard", tmp_path / "site")
    assert f"sweep: {N_CELLS} cells: {N_CELLS} done" in again.stdout
    assert f"leaderboard: {N_CELLS} results in {N_CELLS} rows over 1 tasks" in again.stdout  # one seed: a row per cell
    assert len(json.loads((tmp_path / "site" / "leaderboard.json").read_text())["tasks"]["digits"]["rows"]) == N_CELLS
    assert finished_counts(out) == dict.fromkeys(names, 1)  # nothing ran twice
    assert cli("sweep", "plan", path).stdout.splitlines()[-1] == f"{N_CELLS} cells: {N_CELLS} done"

    # A cell of the sweep has exactly the numbers of a separate run of the same configuration.
    separate, _ = run(RunConfig(task="digits", method="neggrad", deletion_ratio=0.02, method_args={"lr": 0.0001},
                                reference="retrain", output_path=tmp_path / "separate"), registry)
    swept = read_json(out / next((tmp_path / "separate").glob("*neggrad*")).name, "result")
    assert swept["results"] == separate["results"]
    assert swept["reference"]["gap"] == separate["reference"]["gap"]
    assert swept["config"]["method_args"]["lr"] == 0.0001
    validate_result(swept, "swept", registry)


def test_flags_replace_the_sweep_file_and_errors_are_one_line(cli, tmp_path):
    path = sweep_file(tmp_path)
    plan = cli("sweep", "plan", path, "--methods", "finetune", "--ratios", "0.01", "--seeds", "42,87")
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines()[-1] == "4 cells: 4 missing"  # retrain and finetune × 2 seeds
    for spec, expected in (({"ratios": "most"}, "key 'ratios' is a list or 'all'"), ({"colour": 1}, "unknown key 'colour'"),
                           ({"methods": 3}, "key 'methods' has the wrong type"),
                           ({"methods": "neggrad"}, "key 'methods' is a list or 'all'"),
                           ({"methods": ["nosuch"]}, "unknown method 'nosuch'"), ({"ratios": [0.5]}, "deletion ratio 0.5 is not one of"),
                           ({"leaderboard": {"from": ["x"]}}, "key 'leaderboard' needs 'out'")):
        bad = cli("sweep", "plan", sweep_file(tmp_path, "bad.yaml", **spec))
        assert bad.returncode == 2 and expected in bad.stderr and "Traceback" not in bad.stderr, (spec, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(registry, tmp_path, monkeypatch, capsys):
    from mubench import cli
    from mubench.methods.neggrad import NegGrad

    def broken(self):
        raise RuntimeError("the method fell over\nwith a second line")

    monkeypatch.setattr(NegGrad, "unlearn", broken)
    path = sweep_file(tmp_path, reference=None)
    assert cli.main(["-q", "sweep", "run", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "sweep: 6 cells: 4 failed, 2 ran" in printed  # finetune at 2 ratios ran; neggrad at 2 ratios × 2 lrs failed
    assert "failed: digits__cnn__neggrad__df1__seed42__args" in printed
    assert "RuntimeError: the method fell over with a second line" in printed
    out = tmp_path / "out"
    assert not list(out.glob("*neggrad*"))
    assert len(results_in(out)) == 2
    cli.main(["sweep", "plan", str(path)])
    table = capsys.readouterr().out
    assert "failed   digits__cnn__neggrad__df2__seed42__args" in table and "(RuntimeError: the method fell over" in table

    monkeypatch.undo()  # fixed: the next run retries only the failed cells
    assert cli.main(["-q", "sweep", "run", str(path)]) == 0
    assert "sweep: 6 cells: 2 done, 4 ran" in capsys.readouterr().out
    assert not list((out / ".sweep" / "failed").iterdir())


def test_a_sweep_killed_at_any_moment_finishes_with_every_cell_once(cli, tmp_path):
    """SIGKILL from outside at random moments, and from inside while a result is being written (before and after its
    rename), then a run to the end: every cell present once, each a whole valid result, no temporary files."""
    path = sweep_file(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mubench", "-q", "sweep", "run", str(path)]
    for fault in ("*finetune__df1*:synced", "*neggrad__df2*:renamed"):
        killed = cli("-q", "sweep", "run", path, env={"MUBENCH_FAULT": fault})
        assert killed.returncode == -signal.SIGKILL
    rng = random.Random(0)
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(4, 9))
        process.send_signal(signal.SIGKILL)
        process.wait()
    final = cli("-q", "sweep", "run", path)
    assert final.returncode == 0, final.stderr
    names = results_in(out)
    assert len(names) == N_CELLS
    assert all(count == 1 for count in finished_counts(out).values())
    assert not [p for p in out.rglob("*.tmp")]
    checked = cli("validate", "--no-data", *sorted(out.glob("*.json")))
    assert checked.returncode == 0, checked.stderr


def test_two_concurrent_sweeps_run_each_cell_once(tmp_path):
    path = sweep_file(tmp_path, methods=["finetune"], ratios=[0.01, 0.02, 0.03])
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mubench", "-q", "sweep", "run", str(path)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=1800)
        assert process.returncode == 0, err
    assert finished_counts(out) == dict.fromkeys(results_in(out), 1) and len(results_in(out)) == 6


def test_the_ray_executor_runs_the_sweep_on_a_local_cluster_of_two_workers(cli, registry, tmp_path):
    """Two cells at a time on a local cluster; the workers write to the shared folder. Each worker runs one torch thread
    per CPU it was given, so the comparison is with a local run on one thread."""
    from mubench.harness import RunConfig, run

    path = sweep_file(tmp_path, methods=["finetune"], executor="ray", ray={"num_cpus": 1, "cluster_cpus": 2})
    done = cli("-q", "sweep", "run", path, env={"RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert "sweep: 4 cells: 4 ran" in done.stdout
    retrains = [e for e in journal(out) if "retrain" in e["cell"] and e["event"] == "started"]
    assert len({e["pid"] for e in retrains}) == 2  # the two retrain cells ran at once, in the cluster's two workers
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local, _ = run(RunConfig(task="digits", method="finetune", deletion_ratio=0.02, reference="retrain",
                                 output_path=tmp_path / "local"), registry)
    finally:
        torch.set_num_threads(threads)
    remote = read_json(out / "digits__cnn__finetune__df2__seed42.json", "result")
    assert remote["environment"]["torch_threads"] == 1
    assert remote["results"] == local["results"]


def test_the_original_evaluation_is_cached_and_a_tampered_entry_is_rebuilt(registry, tmp_path, caplog):
    from mubench.evaluation import assess
    from mubench.harness import RunConfig, assess_original, evaluation_entry, execute, resolve

    plan = resolve(RunConfig(task="digits", method="original", output_path=tmp_path), registry)
    plan.prepared.load()
    original = plan.prepared.original(plan.device, plan.precision)
    data = plan.prepared.data(plan.device)
    fresh = assess(plan.evaluator, original.model, data)
    cached, _ = assess_original(plan, original, data)
    assert cached == fresh
    entry = evaluation_entry(plan, original)
    manifest = json.loads((entry.folder / "manifest.json").read_text())
    manifest["metrics"]["forget_acc"] = 0.0
    (entry.folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="mubench"):
        again, _ = assess_original(plan, original, data)
    assert again == fresh and "no longer matches its own manifest_sha256" in caplog.text
    # Another deletion set is another entry, never the cached one.
    other = resolve(RunConfig(task="digits", method="original", deletion_ratio=0.01, output_path=tmp_path), registry)
    other.prepared.load()
    assert evaluation_entry(other, original).folder != entry.folder
    result, _, _ = execute(plan)
    assert result["results"]["original"] == fresh


ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
              "--dynamo_backend", "no"]


def test_accelerate_launch_wraps_the_single_process_run_and_more_processes_are_refused(run_digits, tmp_path):
    plain, _ = run_digits("neggrad")
    command = ["-m", "mubench", "-q", "run", "--task", "digits", "--method", "neggrad", "--output-path", str(tmp_path)]
    launched = subprocess.run([*ACCELERATE, "--cpu", "--num_processes", "1", *command], capture_output=True, text=True,
                              cwd=tmp_path, timeout=1800)
    assert launched.returncode == 0, launched.stderr
    result = read_json(tmp_path / "digits__cnn__neggrad__df5__seed42.json", "result")
    assert result["results"] == plain["results"] and result["config"]["precision"] == "fp32"

    spread = subprocess.run([*ACCELERATE, "--multi_gpu", "--num_processes", "2", *command[:-2], "--output-path", str(tmp_path / "two")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=1800)
    assert spread.returncode != 0
    assert spread.stderr.count("mubench: error: this process is one of 2 (WORLD_SIZE)") == 2
    assert not (tmp_path / "two").exists()


def test_accelerate_s_mixed_precision_and_cpu_choice_are_followed(monkeypatch):
    from mubench.errors import UserError
    from mubench.loop import resolve_device, resolve_precision

    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"  # an explicit --precision wins
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(UserError, match="mixed precision 'fp16'"):
        resolve_precision("auto", torch.device("cpu"))
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(UserError, match="one of 4"):
        resolve_device("cpu")
