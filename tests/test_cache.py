"""The cache under $MUBENCH_HOME verifies itself, survives kill -9 at every write point, and builds each entry once."""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import safetensors.torch
import torch
import yaml
from tests_support import digits_card_dict

from mubench.api.registry import Registry
from mubench.cache import CacheEntry, CacheError
from mubench.data import preprocessed
from mubench.harness import Prepared, RunConfig, run
from mubench.recheck import recheck

CPU = torch.device("cpu")
QUICK = "digits_quick"
FIX = f"rebuild it with `mubench train --task {QUICK} --model cnn --force`"


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    """The digits card with a two-epoch recipe, so that θ₀ trains in a second."""
    card = digits_card_dict()
    card["task"] = QUICK
    card["train"]["epochs"] = 2
    folder = tmp_path_factory.mktemp("cards")
    (folder / "quick.yaml").write_text(yaml.safe_dump(card))
    return folder


def mubench_in(home: Path, *args, env=None, umask=None):
    """The CLI with its own $MUBENCH_HOME."""
    return subprocess.run([sys.executable, "-m", "mubench", *map(str, args)], capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "MUBENCH_HOME": str(home), **(env or {})},
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


def run_quick(home, cards, out, *extra, env=None):
    return mubench_in(home, "run", "--task", QUICK, "--method", "original", "--include-path", cards, "--output-path", out,
                      *extra, env=env)


@pytest.fixture(scope="module")
def baseline(cards, tmp_path_factory):
    """A clean run: its home (θ₀ cached) and its result."""
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("out")
    done = run_quick(home, cards, out)
    assert done.returncode == 0, done.stderr
    [path] = out.glob("*.json")
    return home, json.loads(path.read_text())


def entry_folder(home: Path) -> Path:
    [folder] = [p for p in (home / "originals" / QUICK / "cnn").iterdir() if not p.name.startswith(".")]
    return folder


def leftovers(*folders) -> list:
    return [str(p) for folder in folders for p in Path(folder).rglob("*.tmp")]


def same_numbers(a: dict, b: dict) -> bool:
    return a["results"] == b["results"] and a["split"] == b["split"] and a["model_info"]["train_seed"] == b["model_info"]["train_seed"]


# --- a cached θ₀ verifies itself ------------------------------------------------------------------
def negate_weights(folder):
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    safetensors.torch.save_file({k: -v for k, v in tensors.items()}, folder / "model.safetensors")


def edit_sidecar(change):
    def edit(folder):
        sidecar = json.loads((folder / "model.json").read_text())
        change(sidecar)
        (folder / "model.json").write_text(json.dumps(sidecar))
    return edit


TAMPERING = {
    "negated weights": (negate_weights, "model.safetensors does not match the SHA-256 in its manifest (edited or corrupted)"),
    "another task": (edit_sidecar(lambda s: s["identity"].update(task="digits")), "its manifest was made for another task"),
    "another model": (edit_sidecar(lambda s: s["identity"].update(model="resnet")), "its manifest was made for another model"),
    "another data hash": (edit_sidecar(lambda s: s["identity"].update(data_sha256="0" * 64)),
                          "its manifest was made for another data_sha256"),
    "a forged budget": (edit_sidecar(lambda s: s.update(train_steps=1, train_seconds=1e6)),
                        "model.json was edited (it no longer matches its own manifest_sha256)"),
    "a forged weights hash": (edit_sidecar(lambda s: s["files"].update({"model.safetensors": "0" * 64})), "model.json was edited"),
    "a sidecar that is a list": (lambda f: (f / "model.json").write_text("[1, 2]"),
                                 "its manifest is unreadable (expected a JSON object for a cache manifest, got list)"),
    "a sidecar that is not JSON": (lambda f: (f / "model.json").write_bytes(b"\x00\xff garbage"), "its manifest is unreadable (not UTF-8"),
    "missing weights": (lambda f: (f / "model.safetensors").unlink(), "model.safetensors is missing"),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_original_is_refused_in_one_line_that_says_how_to_fix_it(case, cards, baseline, tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(baseline[0], home)
    monkeypatch.setenv("MUBENCH_HOME", str(home))
    tamper, problem = TAMPERING[case]
    tamper(entry_folder(home))
    prepared = Prepared(Registry(include_paths=[cards]), QUICK, None, None)
    prepared.load()
    with pytest.raises(CacheError) as info:
        prepared.original(CPU, "fp32")
    message = str(info.value)
    assert message == f"cached original model of {QUICK}/cnn at {entry_folder(home)}: {problem}; {FIX}" or (
        problem in message and message.endswith(FIX) and "\n" not in message), message
    rebuilt = prepared.original(CPU, "fp32", retrain_cache=True)  # what `mubench train --force` does
    again = prepared.original(CPU, "fp32")
    assert again.sidecar == rebuilt.sidecar and again.sidecar["identity"]["task"] == QUICK
    for a, b in zip(rebuilt.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_from_the_cli_a_tampered_cache_is_exit_2_one_line_no_result_and_train_force_repairs_it(cards, baseline, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    shutil.copytree(baseline[0], home)
    negate_weights(entry_folder(home))
    done = mubench_in(home, "-q", "run", "--task", QUICK, "--method", "original", "--include-path", cards, "--output-path", out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"mubench: error: cached original model of {QUICK}/cnn at ") and line.endswith(FIX)
    assert not list(out.glob("*"))
    repaired = mubench_in(home, "train", "--task", QUICK, "--model", "cnn", "--force", "--include-path", cards)
    assert repaired.returncode == 0, repaired.stderr
    again = run_quick(home, cards, out)
    assert again.returncode == 0 and "original model: cached at" in again.stderr
    [path] = out.glob("*.json")
    assert same_numbers(json.loads(path.read_text()), baseline[1])


# --- kill -9 at every write point -----------------------------------------------------------------
ENTRY = "?" * 16  # an original's cache folder: sixteen hex digits
FAULTS = [
    (f"{ENTRY}:written", "run"),     # θ₀'s folder complete under its temporary name, not yet synced
    (f"{ENTRY}:synced", "run"),      # synced, not yet renamed into place
    (f"{ENTRY}:renamed", "run"),     # in place; the process dies before its result
    ("model.json:written", "run"),   # the sidecar half-made inside the temporary folder
    (f"{ENTRY}:displaced", "force"),  # `train --force`: the old entry moved aside, the new one not yet in place
    (f"{QUICK}__*.json:written", "run"),  # the result file, before its rename
    (f"{QUICK}__*.json:renamed", "run"),  # the result file in place
]


@pytest.mark.parametrize("fault, command", FAULTS, ids=[f"{f}-{c}" for f, c in FAULTS])
def test_kill_9_at_a_write_point_leaves_nothing_half_written(fault, command, cards, baseline, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    if command == "force":
        shutil.copytree(baseline[0], home)
        killed = mubench_in(home, "train", "--task", QUICK, "--force", "--include-path", cards, env={"MUBENCH_FAULT": fault})
    else:
        killed = run_quick(home, cards, out, env={"MUBENCH_FAULT": fault})
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    assert leftovers(home, out) or fault.endswith(":renamed")  # the crash did leave its temporary files
    again = run_quick(home, cards, out)
    assert again.returncode == 0, again.stderr
    assert leftovers(home, out) == []  # cleaned by the next run
    if fault == f"{ENTRY}:renamed":
        assert "original model: cached at" in again.stderr  # a committed entry is whole: it is used, not rebuilt
    [path] = out.glob("*.json")
    assert same_numbers(json.loads(path.read_text()), baseline[1])
    assert recheck(path, Registry(include_paths=[cards])) == ""


def test_two_processes_on_a_cold_cache_train_the_original_once(cards, tmp_path):
    home = tmp_path / "home"
    env = {**os.environ, "MUBENCH_HOME": str(home)}
    processes = [subprocess.Popen([sys.executable, "-m", "mubench", "run", "--task", QUICK, "--method", "original",
                                   "--include-path", str(cards), "--output-path", str(tmp_path / f"out{i}")],
                                  env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) for i in (0, 1)]
    logs = [p.communicate(timeout=1800)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], logs
    assert sum("original model: training" in log for log in logs) == 1, logs
    assert sum("original model: cached at" in log for log in logs) == 1, logs
    first, second = (json.loads(next((tmp_path / f"out{i}").glob("*.json")).read_text()) for i in (0, 1))
    assert same_numbers(first, second)
    assert len([p for p in (home / "originals" / QUICK / "cnn").iterdir() if not p.name.startswith(".")]) == 1


def test_files_take_the_users_umask(cards, baseline, tmp_path):
    home, out = tmp_path / "home", tmp_path / "out"
    done = mubench_in(home, "run", "--task", QUICK, "--method", "neggrad", "--include-path", cards, "--output-path", out,
                      "--save-model", umask=0o027)
    assert done.returncode == 0, done.stderr
    made = list(out.iterdir()) + list(entry_folder(home).iterdir())
    assert {p.suffix for p in made} == {".json", ".safetensors"}
    assert {oct(p.stat().st_mode & 0o777) for p in made} == {oct(0o640)}
    assert oct(entry_folder(home).stat().st_mode & 0o777) == oct(0o750)


# --- entries that are safe to rebuild: preprocessed data and cached references ---------------------
class Doubling:
    """A task type's preprocessing hooks, counting its calls."""

    calls = 0

    def preprocess_key(self):
        return {"kind": "doubling"}

    def preprocess(self, batch):
        Doubling.calls += 1
        return {"x": [2 * v for v in batch["x"]]}


def test_a_corrupted_preprocessing_cache_is_rebuilt_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MUBENCH_HOME", str(tmp_path))
    split = datasets.Dataset.from_dict({"x": list(range(100))})
    first = preprocessed(Doubling(), split, "train", "f" * 64, "toy")
    assert first["x"][:3] == [0, 2, 4] and Doubling.calls > 0
    calls = Doubling.calls
    assert preprocessed(Doubling(), split, "train", "f" * 64, "toy")["x"][99] == 198 and Doubling.calls == calls  # read back
    [arrow] = (tmp_path / "preprocessed" / "toy").glob("train-*/train.arrow")
    data = bytearray(arrow.read_bytes())
    data[-200] ^= 0xFF
    arrow.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mubench"):
        again = preprocessed(Doubling(), split, "train", "f" * 64, "toy")
    assert "train.arrow does not match the SHA-256 in its manifest (edited or corrupted); rebuilding it" in caplog.text
    assert Doubling.calls > calls and again["x"] == [2 * v for v in range(100)]


def test_a_corrupted_reference_is_recomputed(cards, baseline, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MUBENCH_HOME", str(tmp_path / "home"))
    shutil.copytree(baseline[0], tmp_path / "home")
    registry = Registry(include_paths=[cards])
    config = RunConfig(task=QUICK, method="neggrad", reference="retrain", output_path=tmp_path / "out")
    first, _ = run(config, registry)
    [cached] = (tmp_path / "home" / "references").rglob("result.json")
    cached.write_text(cached.read_text().replace('"test_acc": 0.', '"test_acc": 1.', 1))
    (tmp_path / "out" / f"{QUICK}__cnn__retrain__df5__seed42.json").unlink()
    with caplog.at_level(logging.WARNING, logger="mubench"):
        second, _ = run(config, registry)
    assert "result.json does not match the SHA-256 in its manifest" in caplog.text and "rebuilding it" in caplog.text
    assert (tmp_path / "out" / f"{QUICK}__cnn__retrain__df5__seed42.json").is_file()  # retrained
    for key in ("metrics", "gap", "deep_unlearn_score"):  # the same numbers as the first, true reference
        assert second["reference"][key] == first["reference"][key]


def test_an_entry_is_whole_or_absent(tmp_path):
    entry = CacheEntry(tmp_path / "entry", {"k": 1}, "toy entry", "it is rebuilt")
    with entry.locked():
        assert entry.read() is None
        entry.commit(lambda folder: (folder / "a.txt").write_text("one") and {"note": "first"})
        assert entry.read()["note"] == "first"
        with pytest.raises(ZeroDivisionError):
            entry.commit(lambda folder: (folder / "a.txt").write_text("two") and 1 / 0)
        assert entry.read()["note"] == "first" and (entry.folder / "a.txt").read_text() == "one"  # the failed build changed nothing
    assert leftovers(tmp_path) == []
    other = CacheEntry(tmp_path / "entry", {"k": 2}, "toy entry", "it is rebuilt")
    with other.locked(), pytest.raises(CacheError, match="made for another k; it is rebuilt"):
        other.read()
