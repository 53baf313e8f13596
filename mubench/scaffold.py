"""``mubench new task|method NAME``: a plugin package that installs and runs as written, to edit from there.

A method package holds one :class:`~mubench.api.Method` (gradient ascent on D_f paired with descent on D_r, weighted
by ``alpha``) and a test that runs it on the built-in ``digits`` task. A task package holds a card, a dataset loader
(a seeded synthetic table from scikit-learn, no download) and a task type for feature vectors, and a test that runs a
built-in method on it. Both register through the entry point group ``mubench``, as the built-in plugins do.
"""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

from mubench.errors import UserError

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "mubench-{dashed}"
version = "0.1.0"
description = "{description}"
requires-python = ">=3.10"
dependencies = ["mubench"]

[project.optional-dependencies]
test = ["pytest"]

# The entry point that makes mubench find the plugin: group "mubench", a name, the module with the hooks.
[project.entry-points.mubench]
{name} = "{package}"

[tool.setuptools]
packages = ["{package}"]
{package_data}'''

METHOD_MODULE = '''\
"""The mubench plugin {package}: the unlearning method '{name}'."""
from mubench.api import TRAINING_SPACE, Method, Pass, Range, Taxonomy, hookimpl


class {cls}(Method):
    """alpha · loss on D_r − (1 − alpha) · loss on D_f, a D_f batch paired with a D_r batch in each step."""

    name = "{name}"  # what --method and results call it
    summary = "alpha·loss on D_r − (1−alpha)·loss on D_f"  # one line for `mubench list methods`
    taxonomy = Taxonomy(knowledge="loss", corruption="gradient", retention="loss", parameters="dense, internal")
    # Every hyperparameter with its default; the card's `unlearn` recipe, `methods.{name}` and --method-args override
    # them, and the method reads them as self.hp.<name>.
    defaults = Method.defaults | dict(epochs=5, lr=1e-3, alpha=0.9)
    search_space = TRAINING_SPACE | {{"alpha": Range(0.5, 1.0)}}  # what `mubench tune` may try

    @classmethod
    def check_args(cls, args):
        if not 0 <= args["alpha"] <= 1:
            return f"alpha lies in [0, 1], got {{args['alpha']}}"
        return super().check_args(args)

    def passes(self, epoch):
        # One pass per epoch, named "pair": each D_r batch (the lead sets the pass's length) with the next D_f batch.
        return [Pass("pair", self.paired(lead="retain"))]

    def loss(self, batch, phase):
        # phase is the Pass's name; batch is a Pair (batch.forget, batch.retain) for paired passes, else a Batch.
        return self.hp.alpha * self.task_loss(batch.retain) - (1 - self.hp.alpha) * self.task_loss(batch.forget)


@hookimpl
def mubench_methods():
    return [{cls}]
'''

METHOD_TEST = '''\
"""{name} registers as a plugin and unlearns the built-in digits task."""
import json

from mubench.api.registry import Registry
from mubench.cli import main


def test_the_method_is_registered():
    assert "{name}" in Registry().methods


def test_it_runs_on_digits(tmp_path):
    assert main(["-q", "run", "--task", "digits", "--method", "{name}", "--method-args", "epochs=1",
                 "--output-path", str(tmp_path)]) == 0
    [path] = tmp_path.glob("digits__cnn__{name}__*.json")
    result = json.loads(path.read_text())
    assert result["config"]["method_args"]["alpha"] == 0.9
    assert result["plugins"]["method"]["package"] == "mubench-{dashed}"
'''

TASK_MODULE = '''\
"""The mubench plugin {package}: the task '{name}' (its card is cards/{name}.yaml)."""
from pathlib import Path

import numpy as np
import torch

from mubench.api import TensorExamples, hookimpl
from mubench.tasks.classification import ClassificationTask


def load_{name}(spec):
    """The card's dataset (``dataset.loader: {name}``): ``spec`` is the card's ``dataset`` section. Returns a
    ``datasets.DatasetDict`` with ``train`` and ``test`` splits and the columns the card names. Replace the synthetic
    table with your data."""
    import datasets
    from sklearn.datasets import make_classification

    options = spec.get("options", {{}})
    x, y = make_classification(n_samples=options.get("rows", 400), n_features=8, n_informative=5, n_classes=3,
                               random_state=options.get("seed", 0))
    features = datasets.Features({{"features": datasets.List(datasets.Value("float32"), length=x.shape[1]),
                                  "label": datasets.ClassLabel(names=["a", "b", "c"])}})
    cut = int(0.8 * len(x))
    make = lambda rows: datasets.Dataset.from_dict({{"features": x[rows].astype(np.float32), "label": y[rows]}}, features=features)
    return datasets.DatasetDict(train=make(slice(0, cut)), test=make(slice(cut, None)))


load_{name}.options_schema = {{"type": "object", "additionalProperties": False,
                              "properties": {{"rows": {{"type": "integer", "minimum": 10}}, "seed": {{"type": "integer"}}}}}}


class {cls}(ClassificationTask):
    """Feature vectors to class labels. ClassificationTask brings the labels (from the ClassLabel), the loss,
    relabelling and the accuracy records; a task type adds how examples become tensors and reach the model."""

    name = "{name}_classification"  # what the card's task_type names

    def prepare(self, train):
        super().prepare(train)  # the label set: self.label_names
        self.in_features = len(train[0][self.column("features")])

    def model_kwargs(self):
        # What architectures are built with: the built-in `mlp` reads in_features and num_labels.
        return super().model_kwargs() | {{"in_features": self.in_features}}

    def encode(self, split):
        features = torch.as_tensor(np.asarray(split[self.column("features")]), dtype=torch.float32)
        return TensorExamples(features=features, labels=torch.as_tensor(self.targets(split[self.column("label")])))

    def forward(self, model, inputs):
        return model(inputs["features"])  # logits [batch, classes]


@hookimpl
def mubench_task_card_dirs():
    return [Path(__file__).parent / "cards"]


@hookimpl
def mubench_task_types():
    return [{cls}]


@hookimpl
def mubench_dataset_loaders():
    return {{"{name}": load_{name}}}
'''

TASK_CARD = '''\
task: {name}
version: 1
description: A synthetic three-class table (replace it with your data)
modality: tabular
task_type: {name}_classification
dataset:
  loader: {name}
  columns: {{features: features, label: label}}
  options: {{rows: 400, seed: 0}}
  num_labels: 3
models:
  mlp:
    architecture: mlp          # built in: hidden widths, ReLU, a linear head
    params: {{hidden: [32]}}
    original: train            # θ₀ is trained here with the `train` recipe and cached
metrics: [acc, mia_loss_acc, mia_loss_indiscernibility]
deletion: {{ratios: [0.01, 0.05, 0.1], default_ratio: 0.05, split_seed: 0}}
seeds: [0, 1, 2]
train: {{seed: 0, epochs: 30, batch_size: 32, optimizer: adam, lr: 0.003}}
unlearn: {{epochs: 3, batch_size: 32, optimizer: adam, lr: 0.001}}
'''

TASK_TEST = '''\
"""{name} registers as a plugin and a built-in method unlearns it."""
import json

from mubench.api.registry import Registry
from mubench.cli import main


def test_the_card_is_valid():
    assert main(["validate", str(Registry().card_paths["{name}"])]) == 0


def test_neggrad_runs_on_it(tmp_path):
    assert main(["-q", "run", "--task", "{name}", "--method", "neggrad", "--output-path", str(tmp_path)]) == 0
    [path] = tmp_path.glob("{name}__mlp__neggrad__df5__*.json")
    result = json.loads(path.read_text())
    assert result["split"]["n_forget"] == 16 and result["results"]["original"]["test_acc"] > 0.5
    assert result["plugins"]["task"]["package"] == "mubench-{dashed}"
'''

README = '''\
# mubench-{dashed}

A mubench plugin: {description}.

```bash
pip install -e ".[test]"   # into the environment that has mubench
mubench list {kind}s       # '{name}' is listed
{run}
pytest
```
'''


def write_plugin(kind: str, name: str, folder: Path) -> Path:
    """Write the package of a new ``kind`` (``task`` or ``method``) named ``name`` under ``folder``; returns its root."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"a plugin name is lower-case letters, digits and '_', starting with a letter (it names a "
                        f"Python package), got {name!r}")
    dashed, package = name.replace("_", "-"), f"mubench_{name}"
    root = folder / f"mubench-{dashed}"
    if root.exists():
        raise UserError(f"{root} exists already; choose another name or folder")
    cls = "".join(part.capitalize() for part in name.split("_")) + ("Task" if kind == "task" else "")
    fields = dict(name=name, dashed=dashed, package=package, cls=cls, kind=kind)
    if kind == "method":
        fields |= dict(description=f"the unlearning method {name}", package_data="",
                       run=f"mubench run --task digits --method {name}")
        files = {f"{package}/__init__.py": METHOD_MODULE, f"tests/test_{name}.py": METHOD_TEST}
    else:
        fields |= dict(description=f"the task {name}", package_data=f'\n[tool.setuptools.package-data]\n{package} = ["cards/*.yaml"]\n',
                       run=f"mubench run --task {name} --method neggrad")
        files = {f"{package}/__init__.py": TASK_MODULE, f"{package}/cards/{name}.yaml": TASK_CARD, f"tests/test_{name}.py": TASK_TEST}
    files |= {"pyproject.toml": PYPROJECT, "README.md": README}
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(template).format(**fields))
    return root
