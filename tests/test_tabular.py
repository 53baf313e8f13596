"""The tabular task type on scikit-learn's bundled tables: feature vectors, standardised, through an MLP."""
import numpy as np
import pytest
import torch

TABLES = {"iris": (4, 3, 120, 30), "wine": (13, 3, 142, 36), "breast_cancer": (30, 2, 455, 114)}


@pytest.mark.parametrize("task", sorted(TABLES))
def test_each_table_loads_in_its_shape_and_is_standardised_with_training_statistics(registry, task):
    from mubench.harness import Prepared

    features, classes, n_train, n_test = TABLES[task]
    prepared = Prepared(registry, task, None, None)
    splits, kind = prepared.read(), prepared.task
    assert (len(splits["train"]), len(splits["test"])) == (n_train, n_test)
    assert kind.model_kwargs()["in_features"] == features and len(kind.label_names) == classes
    train = kind.encode(splits["train"]).tensors["features"]
    assert train.shape == (n_train, features)
    assert torch.allclose(train.mean(0), torch.zeros(features), atol=1e-5)
    assert torch.allclose(train.std(0, unbiased=False), torch.ones(features), atol=1e-4)
    raw = np.asarray(splits["test"]["features"], dtype=np.float64)
    test = kind.encode(splits["test"]).tensors["features"].double().numpy()
    assert np.allclose(test, (raw - kind.mean) / kind.scale, atol=1e-5)  # the test split takes the training statistics


def test_a_constant_feature_keeps_a_scale_of_one(registry):
    import datasets

    from mubench.tasks.tabular import TabularClassificationTask

    task = TabularClassificationTask(registry.card("iris"))
    train = datasets.Dataset.from_dict({"features": [[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]], "label": [0, 1, 2]})
    task.prepare(train)
    assert task.mean.tolist() == [2.0, 5.0] and task.scale[1] == 1.0
    encoded = task.encode(train).tensors["features"]
    assert encoded[:, 1].tolist() == [0.0, 0.0, 0.0] and torch.isfinite(encoded).all()


def test_an_mlp_learns_iris_and_ngplus_unlearns_it(run_digits):
    result, _ = run_digits("ngplus", task="iris")
    original, unlearned = result["results"]["original"], result["results"]["unlearned"]
    assert result["model_info"]["architecture"] == "mlp" and result["split"]["n_forget"] == 12
    assert original["test_acc"] >= 0.9 and original["forget_acc"] == 1.0
    assert unlearned["test_acc"] >= 0.8


def test_the_mlp_has_the_widths_it_is_given(registry):
    from mubench.tasks.architectures import mlp
    from mubench.tasks.tabular import TabularClassificationTask

    task = TabularClassificationTask(registry.card("wine"))
    linear = [layer for layer in mlp(task, hidden=[8, 5, 3]) if isinstance(layer, torch.nn.Linear)]
    assert [(layer.in_features, layer.out_features) for layer in linear] == [(13, 8), (8, 5), (5, 3), (3, 3)]
