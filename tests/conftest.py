"""Shared fixtures: an offline hub, a session-wide model cache, and helpers to run mubench."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from fixtures import DATA_FIXTURES

os.environ["HF_HUB_OFFLINE"] = "1"
# Tiny models are published here under their real hub ids (tests/fixtures/hub.py); set before
# huggingface_hub is imported, which reads it once.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="mubench-hf-hub-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="mubench-torch-home-")  # torchvision's classifier weights (fixtures)
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], ignore_errors=True)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def mubench_home(tmp_path_factory):
    """One model cache for the session: the digits original trains once."""
    home = tmp_path_factory.mktemp("mubench_home")
    os.environ["MUBENCH_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def registry():
    from mubench.api.registry import Registry

    return Registry()


@pytest.fixture(scope="session")
def digits_prepared(registry):
    """The digits task loaded and encoded, with its 5% deletion set drawn."""
    from mubench.harness import Prepared

    prepared = Prepared(registry, "digits", None, 0.05)
    prepared.load()
    return prepared


@pytest.fixture(scope="session")
def run_digits(registry, tmp_path_factory):
    """Run a method on digits (or ``task=`` another digits card) in-process, cached per argument set; returns the result."""
    from mubench.harness import RunConfig, run

    out = tmp_path_factory.mktemp("results")
    cache = {}

    def go(method, task="digits", **options):
        key = (task, method, json.dumps(options, sort_keys=True, default=str))
        if key not in cache:
            cache[key] = run(RunConfig(task=task, method=method, output_path=out, **options), registry)
        return cache[key]

    return go


def mubench(*args, cwd=None, env=None, timeout=1800):
    """Run the ``mubench`` CLI in a subprocess of this interpreter.

    The timeout only stops a hung process: it is CI's whole test budget, never a
    performance check, so a loaded machine cannot fail a correct run.
    """
    return subprocess.run([sys.executable, "-m", "mubench", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def cli():
    return mubench


@pytest.fixture(scope="session")
def task_data(tmp_path_factory):
    """Build a task's fixture dataset and publish its tiny models once; returns the data folder."""
    built = {}

    def get(task):
        if task not in built:
            root = tmp_path_factory.mktemp(task)
            make, publish = DATA_FIXTURES[task]
            built[task] = make(root / "data")
            publish(task)
        return built[task]

    return get


def fidelity_setting(prepared, build):
    """A fresh context around a tiny model (``build(seed)``), and a fixed batch of 24 digits, every third in D_f."""
    import torch

    from mubench.api import Context
    from mubench.data import Batch

    cpu = torch.device("cpu")
    tensors = prepared.train.tensors
    batch = Batch({"pixel_values": tensors["pixel_values"][:24].clone(), "labels": tensors["labels"][:24].clone()},
                  torch.arange(24) % 3 == 0)
    ctx = Context(prepared.task, build(0), prepared.data(cpu), cpu, "fp32", lambda: build(7), torch.Generator().manual_seed(0))
    return prepared.card, ctx, batch


@pytest.fixture
def setting(digits_prepared):
    """The tiny MLP with dead hidden units (fidelity_support.tiny_mlp) on digits."""
    from fidelity_support import tiny_mlp

    return fidelity_setting(digits_prepared, tiny_mlp)


@pytest.fixture
def conv_setting(digits_prepared):
    """The tiny CNN with BatchNorm (fidelity_support.tiny_cnn) on digits."""
    from fidelity_support import tiny_cnn

    return fidelity_setting(digits_prepared, tiny_cnn)
