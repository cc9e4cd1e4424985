"""One lab cell: the paired design, the tested epoch (last, or best on dev: dev only decides),
the step-matched base."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from helpers import toy_lab_task

from danlu.datasets import TextDataset
from danlu.lab.atoms import ATOMS
from danlu.lab.cell import Cell, classification_metrics, run_cell
from danlu.lab.task import Task, split_for_seed


def test_metrics_equal_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 3, 200), rng.integers(0, 3, 200)
    got = classification_metrics(preds, labels, 3)
    assert got["accuracy"] == pytest.approx(metrics.accuracy_score(labels, preds))
    assert got["macro_f1"] == pytest.approx(metrics.f1_score(labels, preds, average="macro"))


def test_split_is_a_function_of_the_seed_only():
    pool, _ = toy_lab_task().load()
    a_train, a_dev = split_for_seed(pool, 100, 0.2, seed=3)
    b_train, b_dev = split_for_seed(pool, 100, 0.2, seed=3)
    assert (a_train.texts, a_dev.texts) == (b_train.texts, b_dev.texts)
    assert len(a_train) == 80 and len(a_dev) == 20
    c_train, _ = split_for_seed(pool, 100, 0.2, seed=4)
    assert c_train.texts != a_train.texts
    with pytest.raises(ValueError, match=r"n_train must be in \[2, 160\]"):
        split_for_seed(pool, 1000, 0.2, seed=0)


def _test_accuracy_per_epoch(monkeypatch, task: Task) -> list[float]:
    """Spy on the lab's evaluation: after every dev evaluation, also score the test split
    with the same module (what the record's test metric must equal at the tested epoch)."""
    import danlu.lab.cell as cell

    _, test = task.load()
    seen, plain = [], cell._predict
    x_test = {}
    build = task.build

    def spy_build(texts, n_classes):
        model, encode = build(texts, n_classes)
        x_test["x"] = encode(test.texts)
        return model, encode

    def spy(task_, module, inputs, labels):
        preds = plain(task_, module, inputs, labels)
        if len(labels) != len(test):  # a dev evaluation
            y = torch.tensor(test.labels)
            seen.append(float((plain(task_, module, x_test["x"], y) == y).float().mean()))
        return preds

    monkeypatch.setattr(cell, "_predict", spy)
    return seen, dataclasses.replace(task, build=spy_build)


@pytest.mark.parametrize(
    ("select", "seed", "lr"), [("last", 0, 1e-2), ("best", 0, 1e-2), ("best", 6, 3e-2), ("last", 6, 3e-2)]
)
def test_record_tests_the_selected_epoch(monkeypatch, select, seed, lr):
    from danlu.lab.results import validate_record

    task = toy_lab_task(epochs=4, select=select, lr=lr)
    seen, task = _test_accuracy_per_epoch(monkeypatch, task)
    record = run_cell(task, Cell("toy", "base", seed=seed, n_train=100))
    validate_record(record)
    dev = [e["dev_accuracy"] for e in record["epochs"]]
    assert record["best_epoch"] == int(np.argmax(dev)) + 1  # first best on ties
    expected = len(dev) if select == "last" else record["best_epoch"]
    assert record["selected_epoch"] == expected
    assert record["dev"]["accuracy"] == dev[expected - 1]
    assert record["metrics"]["accuracy"] == pytest.approx(seen[expected - 1])
    assert record["steps"] == 4 * 5  # 4 epochs of ceil(80 / 16) steps
    assert record["epochs"][-1]["steps"] == record["steps"]


def test_best_and_last_differ_when_dev_peaks_early(monkeypatch):
    # the discriminating case: a seed whose best dev epoch (1) is not the last
    task = toy_lab_task(epochs=4, select="best", lr=3e-2)
    seen, task = _test_accuracy_per_epoch(monkeypatch, task)
    record = run_cell(task, Cell("toy", "base", seed=6, n_train=100))
    assert record["best_epoch"] == 1 and record["selected_epoch"] == record["best_epoch"]
    assert record["metrics"]["accuracy"] != pytest.approx(seen[-1])


def test_select_must_be_last_or_best():
    with pytest.raises(ValueError, match="Task.select must be 'last'"):
        toy_lab_task(select="final")


def test_same_seed_gives_the_same_data_and_order_for_every_combo():
    # EMA changes only the weights that are evaluated, so with the same seed its training
    # trajectory (split, init, data order) must be the base's exactly
    task = toy_lab_task()
    base = run_cell(task, Cell("toy", "base", seed=1, n_train=100))
    ema = run_cell(task, Cell("toy", "ema", seed=1, n_train=100))
    assert [e["train_loss"] for e in ema["epochs"]] == [e["train_loss"] for e in base["epochs"]]
    other_seed = run_cell(task, Cell("toy", "base", seed=2, n_train=100))
    assert other_seed["epochs"][0]["train_loss"] != base["epochs"][0]["train_loss"]


def _poisoned(task: Task) -> Task:
    pool, test = task.load()
    flipped = TextDataset(test.texts, [1 - y for y in test.labels], test.label_names)
    return dataclasses.replace(task, data=(pool, flipped))


@pytest.mark.parametrize("combo", ["base", "ema"])
def test_test_split_is_never_read_before_the_final_evaluation(combo):
    task = toy_lab_task()
    clean = run_cell(task, Cell("toy", combo, seed=0, n_train=100))
    poisoned = run_cell(_poisoned(task), Cell("toy", combo, seed=0, n_train=100))
    for key in ("epochs", "best_epoch", "dev", "steps"):
        assert poisoned[key] == clean[key], key
    # the final evaluation does read it: flipped binary labels flip the accuracy
    assert poisoned["metrics"]["accuracy"] == pytest.approx(1 - clean["metrics"]["accuracy"])


def test_step_matched_base_takes_the_steps_of_the_augmented_combo():
    task = toy_lab_task(epochs=1)
    eda = run_cell(task, Cell("toy", "eda", seed=0, n_train=40, steps_match="eda"))
    matched = run_cell(task, Cell("toy", "base", seed=0, n_train=40, match="eda"))
    base = run_cell(task, Cell("toy", "base", seed=0, n_train=40))
    assert eda["steps"] == matched["steps"] > base["steps"] == 2
    assert (matched["match"], eda["steps_match"]) == ("eda", "eda")
    # the matched base evaluates after each of its own epochs and stops at the step budget
    assert [e["steps"] for e in matched["epochs"]][:2] == [2, 4]
    assert matched["epochs"][-1]["steps"] == eda["steps"]


# the multi-head atoms refuse this one-head task; tests/lab/test_lab_multitask.py trains them
@pytest.mark.parametrize("combo", [a for a in ATOMS if a != "base" and not a.startswith("mt_")])
def test_every_atom_trains_a_cell(combo):
    from danlu.lab.results import validate_record

    record = run_cell(toy_lab_task(epochs=2, unlabelled="rest"), Cell("toy", combo, seed=0, n_train=40))
    validate_record(record)
    assert record["steps"] >= 2 * 2 and all(math.isfinite(e["train_loss"]) for e in record["epochs"])


def test_unlabelled_rest_is_the_pool_the_run_does_not_draw():
    from danlu.lab.task import rest_for_seed

    task = toy_lab_task(unlabelled="rest")
    pool, _ = task.load()
    train, dev = split_for_seed(pool, 100, 0.2, seed=5)
    rest = task.load_unlabelled(pool, 100, seed=5)
    assert len(rest) == len(pool) - 100 and set(rest.labels) == {-1}
    # the drawn indices and the rest partition the pool (texts may repeat, so count them)
    from collections import Counter

    assert Counter(train.texts + dev.texts + rest.texts) == Counter(pool.texts)
    assert rest_for_seed(pool, None, seed=5).texts == []
    assert toy_lab_task().load_unlabelled(pool, 100, seed=5) is None
    given = TextDataset(["好", "差"], [0, 1], pool.label_names)
    assert toy_lab_task(unlabelled=lambda: given).load_unlabelled(pool, 100, 0).texts == ["好", "差"]
    with pytest.raises(ValueError, match="Task.unlabelled must be"):
        toy_lab_task(unlabelled="all")


def test_atom_extension_points_see_the_run_and_replace_the_prediction():
    from danlu.core import Trick
    from danlu.lab.atoms import Atom

    seen = {}

    def prepare(ctx):  # runs before make_trick and before training
        seen["order"] = ["prepare"]
        seen["init_head"] = ctx.model.head.weight.detach().clone()

    def make(ctx):
        seen["order"].append("make")
        seen["ctx"] = ctx
        return Trick()

    def flipped(ctx, model, texts):  # the base's probabilities with the two classes swapped
        logits = model(**ctx.encode(texts))
        return logits.softmax(-1).flip(-1)

    atoms = {**ATOMS, "spy": Atom("spy", "test", "spy", make_trick=make, prepare_model=prepare),
             "flip": Atom("flip", "test", "tta", predict=flipped)}  # fmt: skip
    task = toy_lab_task(unlabelled="rest", epochs=2)
    spy = run_cell(task, Cell("toy", "spy", seed=0, n_train=60), atoms)
    ctx = seen["ctx"]
    assert seen["order"] == ["prepare", "make"]
    assert ctx.batch_size == task.batch_size and len(ctx.unlabelled) == 100
    assert torch.equal(ctx.encode(["好"])["input_ids"], ctx.encode(["好"])["input_ids"])
    assert spy["eval_s"] > 0
    base = run_cell(task, Cell("toy", "base", seed=0, n_train=60), atoms)
    assert spy["metrics"] == base["metrics"]  # a no-op trick changes nothing
    flip = run_cell(task, Cell("toy", "flip", seed=0, n_train=60), atoms)
    # flipped probabilities select the worst dev epoch, and flip every binary prediction
    worst = min(range(2), key=lambda i: (base["epochs"][i]["dev_accuracy"], i))
    assert flip["dev"]["accuracy"] == pytest.approx(1 - base["epochs"][worst]["dev_accuracy"])
    with pytest.raises(ValueError, match="replace the prediction"):
        from danlu.lab.atoms import parse_combo

        parse_combo("flip+flip2", {**atoms, "flip2": Atom("flip2", "t", "tta2", predict=flipped)})


def test_divergence_rule():
    from danlu.lab.cell import diverged

    ok = {"epochs": [{"train_loss": 0.5}], "dev": {"accuracy": 0.7}, "dev_pred_classes": 2}
    assert diverged(ok) is None
    assert "one class" in diverged({**ok, "dev_pred_classes": 1})
    assert "non-finite" in diverged({**ok, "epochs": [{"train_loss": 0.5}, {"train_loss": float("inf")}]})
