"""The plugin registry: built-ins registered as plugins, a third-party package, --include-path."""
import importlib
import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

from mubench.api import Choice, Method, Range, Taxonomy, hookimpl
from mubench.api.registry import Registry
from mubench.errors import UserError
from mubench.results import load_result, validate_result

REPO = Path(__file__).resolve().parents[1]

PLUGIN_MODULE = '''
"""A third-party mubench plugin: a wine task (new task type, loader, architecture) and a method."""
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mubench.api import Method, Pass, TensorExamples, hookimpl
from mubench.tasks.classification import ClassificationTask


class VectorClassification(ClassificationTask):
    name = "vector_classification"

    def encode(self, split):
        features = torch.as_tensor(np.asarray(split[self.column("features")]), dtype=torch.float32)
        return TensorExamples(features=features, labels=torch.as_tensor(split[self.column("label")]))

    def forward(self, model, inputs):
        return model(inputs["features"])


def load_wine(spec):
    import datasets
    from sklearn.datasets import load_wine as sk_wine
    data = sk_wine()
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(0.75 * len(x))
    make = lambda idx: datasets.Dataset.from_dict({"features": x[idx].tolist(), "label": data.target[idx].tolist()})
    return datasets.DatasetDict(train=make(order[:cut]), test=make(order[cut:]))


def mlp(task, hidden=32):
    return nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, task.model_kwargs()["num_labels"]))


class NoiseThenFinetune(Method):
    """Perturb every weight with Gaussian noise, then fine-tune on D_r."""
    name = "demo_noise"
    summary = "weight noise, then fine-tune on D_r"
    defaults = Method.defaults | dict(sigma=0.05)

    def setup(self):
        with torch.no_grad():
            for p in self.model.parameters():
                p.add_(torch.randn_like(p) * self.hp.sigma)

    def passes(self, epoch):
        return [Pass("retain", self.loader("retain"))]

    def loss(self, batch, phase):
        return self.task_loss(batch)


@hookimpl
def mubench_task_card_dirs():
    return [Path(__file__).parent / "cards"]


@hookimpl
def mubench_task_types():
    return [VectorClassification]


@hookimpl
def mubench_dataset_loaders():
    return {"sklearn_wine": load_wine}


@hookimpl
def mubench_architectures():
    return {"wine_mlp": mlp}


@hookimpl
def mubench_methods():
    return [NoiseThenFinetune]
'''

WINE_CARD = {
    "task": "demo_wine", "modality": "tabular", "task_type": "vector_classification",
    "dataset": {"loader": "sklearn_wine", "columns": {"features": "features", "label": "label"}},
    "models": {"mlp": {"architecture": "wine_mlp", "params": {"hidden": 32}, "original": "train"}},
    "metrics": ["acc"], "deletion": {"ratios": [0.05, 0.1], "default_ratio": 0.1, "split_seed": 0},
    "train": {"epochs": 40, "batch_size": 16, "optimizer": "adam", "lr": 0.01},
    "unlearn": {"epochs": 3, "batch_size": 16, "optimizer": "adam", "lr": 0.001},
}


@pytest.fixture(scope="module")
def demo_plugin(tmp_path_factory):
    """The plugin package written to a temporary folder and pip-installed into this environment."""
    root = tmp_path_factory.mktemp("plugin")
    package = root / "mubench_demo"
    (package / "cards").mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_MODULE)
    (package / "cards" / "wine.yaml").write_text(yaml.safe_dump(WINE_CARD))
    (root / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mubench-demo-plugin"
        version = "0.0.1"

        [project.entry-points.mubench]
        demo = "mubench_demo"

        [tool.setuptools]
        packages = ["mubench_demo"]

        [tool.setuptools.package-data]
        mubench_demo = ["cards/*.yaml"]
    '''))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", str(root)], check=True, capture_output=True)
    importlib.invalidate_caches()
    yield root
    subprocess.run([*pip, "uninstall", "-y", "mubench-demo-plugin"], check=True, capture_output=True)


def test_builtins_are_plugins(registry):
    names = {impl.plugin_name for impl in registry.plugins.hook.mubench_methods.get_hookimpls()}
    assert {"tasks", "methods"} <= {impl.plugin_name for impl in registry.plugins.hook.mubench_task_types.get_hookimpls()} | names
    assert {"neggrad", "randlabel", "badt", "scrub", "salun", "retrain", "original"} <= set(registry.methods)
    assert "digits" in registry.card_paths and "image_classification" in registry.task_types


def test_third_party_plugin_is_listed(demo_plugin, cli):
    tasks, methods = cli("list", "tasks"), cli("list", "methods")
    assert tasks.returncode == 0 and "demo_wine" in tasks.stdout and "digits" in tasks.stdout
    assert methods.returncode == 0 and "demo_noise" in methods.stdout


def test_third_party_task_runs_with_a_builtin_method(demo_plugin, cli, tmp_path):
    done = cli("run", "--task", "demo_wine", "--method", "salun", "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    [path] = tmp_path.glob("demo_wine__mlp__salun__*.json")
    result = load_result(path)
    validate_result(result, path, Registry())
    assert result["split"]["n_forget"] == round(0.1 * result["split"]["n_train"])
    demo = {"plugin": "demo", "package": "mubench-demo-plugin", "version": "0.0.1"}
    assert result["plugins"]["task"] == result["plugins"]["task_type"] == demo
    assert result["plugins"]["method"]["plugin"] == "methods" and result["plugins"]["method"]["package"] == "mubench"


def test_third_party_method_runs_on_a_builtin_task(demo_plugin, cli, tmp_path):
    done = cli("run", "--task", "digits", "--method", "demo_noise", "--method-args", "sigma=0.1", "--output-path", tmp_path)
    assert done.returncode == 0, done.stderr
    [path] = tmp_path.glob("digits__cnn__demo_noise__*.json")
    result = load_result(path)
    assert result["config"]["method_args"]["sigma"] == 0.1
    assert result["plugins"]["method"] == {"plugin": "demo", "package": "mubench-demo-plugin", "version": "0.0.1"}
    assert result["plugins"]["task"]["package"] == "mubench"


def test_include_path_adds_cards(tmp_path, cli):
    card = yaml.safe_load((REPO / "tasks" / "digits" / "digits.yaml").read_text())
    card.update(task="digits_quick", train={**card["train"], "epochs": 3})
    (tmp_path / "cards").mkdir()
    (tmp_path / "cards" / "quick.yaml").write_text(yaml.safe_dump(card))
    listed = cli("list", "tasks", "--include-path", tmp_path / "cards")
    assert "digits_quick" in listed.stdout
    done = cli("run", "--task", "digits_quick", "--method", "neggrad", "--include-path", tmp_path / "cards",
               "--output-path", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert result["task"] == "digits_quick" and result["plugins"]["task"] == {"include_path": str((tmp_path / "cards").resolve())}


def test_a_name_given_by_two_plugins_is_refused_where_it_is_used(caplog):
    class Impostor(Method):
        name = "salun"

    class Plugin:
        @hookimpl
        def mubench_methods(self):
            return [Impostor]

    registry = Registry(plugins=[Plugin()])
    with pytest.raises(UserError, match=r"method 'salun' is given twice \(methods and .*\); remove one of them"):
        registry.method("salun")
    assert registry.method("neggrad").name == "neggrad"  # every other method still works
    assert "method 'salun' is given by two plugins" in caplog.text


def fake_plugin(root: Path, name: str, source: str) -> Path:
    """A plugin package on a folder for PYTHONPATH: its module and a dist-info with the entry point."""
    site = root / f"site-{name}"
    (site / f"{name}-0.0.1.dist-info").mkdir(parents=True)
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    (site / f"{name}-0.0.1.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n")
    (site / f"{name}-0.0.1.dist-info" / "entry_points.txt").write_text(f"[mubench]\n{name} = {name}\n")
    return site


PLUGINS = {
    "fails_to_import": """
        raise ImportError("no module named 'missing_dependency'")
    """,
    "raises_in_hook": """
        from mubench.api import hookimpl

        @hookimpl
        def mubench_methods():
            raise RuntimeError("the hook broke")
    """,
    "badly_named": """
        from mubench.api import Method, hookimpl

        class Slashed(Method):
            name = "no/slash"

        @hookimpl
        def mubench_methods():
            return [Slashed, "not a class"]
    """,
    "clashing": """
        from mubench.api import Method, hookimpl

        class Impostor(Method):
            name = "neggrad"

        @hookimpl
        def mubench_methods():
            return [Impostor]
    """,
}
WARNINGS = {
    "fails_to_import": "plugin 'fails_to_import' (package fails_to_import) failed to load and is left out: ImportError: "
                       "no module named 'missing_dependency'",
    "raises_in_hook": "plugin 'raises_in_hook': hook mubench_methods raised RuntimeError: the hook broke; its answer is left out",
    "badly_named": "plugin 'badly_named': method 'no/slash' is left out: a name is letters, digits",
    "clashing": "method 'neggrad' is given by two plugins (methods and clashing); neither is used",
}


def test_a_broken_plugin_is_named_in_one_line_and_left_out(tmp_path, cli):
    path = ":".join(str(fake_plugin(tmp_path, name, source)) for name, source in PLUGINS.items())
    done = cli("list", "methods", env={"PYTHONPATH": path}, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "salun " in done.stdout and "neggrad" not in done.stdout and "no/slash" not in done.stdout
    lines = done.stderr.strip().splitlines()
    for name, warning in WARNINGS.items():
        assert sum(warning in line for line in lines) == 1, (name, done.stderr)
    assert sum("left out" in line for line in lines) == 4  # the badly named plugin's two items, the import, the hook
    ran = cli("run", "--task", "digits", "--method", "original", "--output-path", tmp_path / "out", env={"PYTHONPATH": path})
    assert ran.returncode == 0 and list((tmp_path / "out").glob("digits__cnn__original__*.json")), ran.stderr
    for name, warning in WARNINGS.items():  # said by the cached catalog, not again when the plugins load for the run
        assert ran.stderr.count(warning) == 1, (name, ran.stderr)
    clash = cli("run", "--task", "digits", "--method", "neggrad", "--output-path", tmp_path / "out2", env={"PYTHONPATH": path})
    assert clash.returncode == 2 and "Traceback" not in clash.stderr
    assert clash.stderr.strip().splitlines()[-1] == (
        "mubench: error: method 'neggrad' is given twice (methods and clashing); remove one of them")
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").iterdir())


def test_a_broken_or_clashing_card_disables_that_card_only(tmp_path, cli):
    (tmp_path / "broken.yaml").write_text("task: broken\nmodels: [unclosed\n")
    (tmp_path / "digits.yaml").write_text((REPO / "tasks" / "digits" / "digits.yaml").read_text())
    listed = cli("list", "tasks", "--include-path", tmp_path, timeout=300)
    assert listed.returncode == 0 and "digits_classes" in listed.stdout and "imdb" in listed.stdout
    assert not any(line.startswith("digits ") for line in listed.stdout.splitlines())
    warnings = listed.stderr.strip().splitlines()
    assert len(warnings) == 2 and "broken.yaml: not valid YAML" in warnings[0] + warnings[1]
    assert any("task 'digits' is defined twice" in w for w in warnings)
    used = cli("run", "--task", "digits", "--method", "original", "--include-path", tmp_path, "--output-path", tmp_path / "out")
    assert used.returncode == 2 and used.stderr.strip().splitlines()[-1].startswith("mubench: error: task 'digits' is given twice (")


def test_installed_layout_keeps_everything_inside_the_mubench_namespace(tmp_path):
    """A wheel of the project ships tasks/ and methods/ as mubench.tasks and mubench.methods."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    [wheel] = tmp_path.glob("mubench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mubench/tasks/digits/digits.yaml" in names
    assert "mubench/tasks/sklearn_tables.yaml" in names and "mubench/tasks/iris/iris.yaml" in names  # a base card too
    assert "mubench/methods/salun.py" in names
    assert "mubench/schemas/result.schema.json" in names
    assert not [n for n in names if n.startswith(("tasks/", "methods/"))]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[mubench]" in text and "tasks = mubench.tasks" in text and "methods = mubench.methods" in text


@pytest.mark.parametrize("declared, problem", [
    ({"taxonomy": Taxonomy("gradient", "data", "loss", "dense, internal")}, "taxonomy knowledge 'gradient' is not one of"),
    ({"taxonomy": Taxonomy("loss", "data", "loss+loss", "dense, internal")}, "taxonomy retention 'loss+loss'"),
    ({"taxonomy": Taxonomy("loss", "data", "loss", "dense")}, "taxonomy parameters 'dense'"),
    ({"taxonomy": ("loss", "data", "loss", "dense, internal")}, "its taxonomy is ("),
    ({"search_space": {"lrr": Range(1e-5, 1e-1, log=True)}}, "its search space names 'lrr', which is not one of its hyperparameters"),
    ({"search_space": {"lr": Range(0.1, 0.01)}}, "search space 'lr': range [0.1, 0.01] is empty"),
    ({"search_space": {"lr": Range(0.0, 0.1, log=True)}}, "not positive on a log scale"),
    ({"search_space": {"epochs": Range(1, 2.5)}}, "integer hyperparameter has fractional ends"),
    ({"search_space": {"optimizer": Choice(("sgd",))}}, "a choice needs two options"),
    ({"search_space": {"optimizer": Choice(("sgd", 3))}}, "are not all of the default's type"),
    ({"search_space": {"lr": (1e-5, 1e-1)}}, "not a Range or a Choice"),
])
def test_a_method_that_declares_nonsense_is_left_out_in_one_line(caplog, declared, problem):
    Bad = type("Bad", (Method,), {"name": "bad", **declared})

    class Plugin:
        @hookimpl
        def mubench_methods(self):
            return [Bad]

    registry = Registry(plugins=[Plugin()])
    assert "bad" not in registry.methods and "neggrad" in registry.methods
    [line] = [r.getMessage() for r in caplog.records if "'bad'" in r.getMessage()]
    assert "method 'bad' is left out: " in line and problem in line


def test_a_method_without_a_taxonomy_or_search_space_registers_with_the_training_knobs(caplog):
    Plain = type("Plain", (Method,), {"name": "plain", "defaults": {"epochs": 2, "sigma": 0.1}})

    class Plugin:
        @hookimpl
        def mubench_methods(self):
            return [Plain]

    registry = Registry(plugins=[Plugin()])
    assert registry.method("plain").knobs() == {"epochs": Range(1, 10)} and registry.method("plain").taxonomy is None


def test_the_roster_has_thirty_methods_each_placed_in_the_taxonomy(registry, cli):
    assert len(registry.methods) >= 30
    assert all(cls.taxonomy is not None and cls.declaration_problem() is None for cls in registry.methods.values())
    listed = cli("list", "methods")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == set(Registry().methods)  # what is installed now (the demo plugin's method, while it is)
    assert rows["salun"].split()[1:5] == ["loss", "data", "loss", "sparse,"] and "internal" in rows["salun"]
    assert rows["rmu"].split()[1:4] == ["representation", "model", "representation"]


def test_listing_and_validating_a_card_read_the_cached_catalog_without_importing_torch(cli, tmp_path):
    import os

    home = tmp_path / "home"
    env = {"MUBENCH_HOME": str(home)}
    built = cli("list", "methods", env=env)  # the first run makes the catalog from the live plugins
    [cached] = (home / "catalog").glob("*.json")
    probe = ("import sys; from mubench.cli import main; main({args}); "
             "print('torch imported' if 'torch' in sys.modules else 'no torch')")
    for args in (["list", "methods"], ["list", "tasks"], ["validate", str(REPO / "tasks" / "iris" / "iris.yaml")]):
        done = subprocess.run([sys.executable, "-c", probe.format(args=args)], capture_output=True, text=True,
                              env={**os.environ, **env})
        assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "no torch", (args, done.stderr)
    again = cli("list", "methods", env=env)
    assert again.stdout == built.stdout
    data = json.loads(cached.read_text())  # what is listed is what the catalog says
    data["methods"]["neggrad"]["summary"] = "read from the catalog"
    cached.write_text(json.dumps(data))
    assert "read from the catalog" in cli("list", "methods", env=env).stdout


def test_the_catalog_fingerprint_changes_with_a_plugin_s_files_and_packages(tmp_path, monkeypatch):
    import os
    from types import SimpleNamespace

    from mubench.api.catalog import fingerprint

    (tmp_path / "fp_plugin").mkdir()
    module = tmp_path / "fp_plugin" / "__init__.py"
    module.write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = SimpleNamespace(name="fp", value="fp_plugin", module="fp_plugin", dist=SimpleNamespace(name="fp-plugin", version="1"))
    first = fingerprint([entry])
    assert fingerprint([entry]) == first
    module.write_text("x = 22\n")
    assert fingerprint([entry]) != first
    stat = module.stat()
    second = fingerprint([entry])
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the same size, touched later
    assert fingerprint([entry]) != second
    assert fingerprint([SimpleNamespace(**vars(entry) | {"dist": SimpleNamespace(name="fp-plugin", version="2")})]) != \
        fingerprint([entry])
    assert fingerprint([]) != fingerprint([entry])
