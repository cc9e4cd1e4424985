"""The multi-head task ``rotten-mt`` and the multi-task atoms: the 3-class cross-entropy is
the review head's loss plus the sentiment head's on reviews (so base = fixed weights 1/1),
the per-head split, a smoke grid where the log-variances move and DWA's weights apply from
the third epoch, and the error on a task without heads."""

from __future__ import annotations

import dataclasses
import doctest
import functools

import pytest
import torch
import torch.nn.functional as F
from helpers import toy_lab_task

from danlu.lab import tasks
from danlu.lab.atoms import ATOMS, LOG_VAR_LR, Atom, RunContext, _multitask
from danlu.lab.models import TextCNN
from danlu.lab.runner import run_lab
from danlu.lab.task import Task


@pytest.fixture(scope="module")
def mt():
    task = tasks.get_task("rotten-mt", smoke=True)
    pool, _ = task.load()
    return task, pool


def _batch(mt, n: int = 48):
    task, pool = mt
    torch.manual_seed(0)
    model, encode = task.build(pool.texts, len(pool.label_names))
    model.eval()  # no dropout: every forward below sees the same function
    labels = torch.tensor(pool.labels[:n])
    assert set(labels.tolist()) == {0, 1, 2}  # plot, rotten and fresh rows
    return model, {**encode(pool.texts[:n]), "labels": labels}


def test_task_is_built_in_with_three_classes(mt):
    task, pool = mt
    _, test = task.load()
    assert pool.label_names == ("plot", "rotten", "fresh") and len(test) == 300
    full = tasks.get_task("rotten-mt")
    assert full.epochs == 10 and set(full.heads) == {"review", "sentiment"}
    assert doctest.testmod(tasks).failed == 0


def test_cross_entropy_is_review_plus_sentiment_on_reviews(mt):
    model, batch = _batch(mt)
    y = batch["labels"]
    z = TextCNN.forward(model, batch["input_ids"])  # the two heads' raw logits, (B, 4)
    review, sentiment = z[:, :2], z[:, 2:]
    is_review = y > 0
    plain = (
        F.cross_entropy(review, is_review.long(), reduction="sum")
        + F.cross_entropy(sentiment[is_review], y[is_review] - 1, reduction="sum")
    ) / len(y)
    task = mt[0]
    loss, log_probs = task.loss_fn(model, batch)
    torch.testing.assert_close(loss, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(len(y)))
    # the heads are recoverable from the output, up to a constant per row
    lp = log_probs.double()
    torch.testing.assert_close(lp[:, 1:].logsumexp(-1) - lp[:, 0], (z[:, 1] - z[:, 0]).double())
    torch.testing.assert_close(lp[:, 2] - lp[:, 1], (z[:, 3] - z[:, 2]).double())
    # and Task.heads gives the same losses as the plain heads
    for name, (logits, target) in {k: h(log_probs, y) for k, h in task.heads.items()}.items():
        raw = review if name == "review" else sentiment
        ref = F.cross_entropy(raw, torch.where(is_review, y - 1, -100) if name == "sentiment"
                              else is_review.long())  # fmt: skip
        torch.testing.assert_close(F.cross_entropy(logits, target), ref, rtol=0, atol=1e-6)


def test_heads_split_hand_built_scores():
    heads = tasks.get_task("rotten-mt").heads
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0], [2.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 2])
    review, review_y = heads["review"](logits, labels)
    sentiment, sentiment_y = heads["sentiment"](logits, labels)
    lse = torch.log(torch.exp(logits[:, 1]) + torch.exp(logits[:, 2]))
    torch.testing.assert_close(review, torch.stack([logits[:, 0], lse], -1))
    torch.testing.assert_close(sentiment, logits[:, 1:])
    assert review_y.tolist() == [0, 1, 1] and sentiment_y.tolist() == [-100, 0, 1]


def _spy(kept: dict, name: str, ctx: RunContext):
    trick = _multitask(name, ctx)
    kept.setdefault(name, []).append((trick, ctx.optimizer))
    return trick


def test_smoke_grid_uncertainty_moves_and_dwa_reweights(mt, tmp_path):
    kept: dict = {}
    atoms = {**ATOMS, **{f"mt_{m}": Atom(f"mt_{m}", "spy", "loss",
                                         make_trick=functools.partial(_spy, kept, m))
                         for m in ("uncertainty", "dwa", "fixed")}}  # fmt: skip
    task = dataclasses.replace(mt[0], epochs=3)  # DWA's weights apply from the third epoch
    combos = ["base", "mt_uncertainty", "mt_dwa", "mt_fixed"]
    records = run_lab(task, combos, seeds=2, n_train=120, out=tmp_path, workers=0,
                      atoms=atoms, progress=False)  # fmt: skip
    loss = {(r["combo"], r["seed"]): [e["train_loss"] for e in r["epochs"]] for r in records}
    assert len(loss) == 8
    for seed in (0, 1):
        base = loss["base", seed]
        assert loss["mt_fixed", seed] == pytest.approx(base, abs=1e-5)  # base = weights 1/1
        assert loss["mt_dwa", seed][:2] == pytest.approx(base[:2], abs=1e-5)  # weights 1 ...
        assert loss["mt_dwa", seed][2] != pytest.approx(base[2], abs=1e-5)  # ... then DWA's
    for trick, optimizer in kept["uncertainty"]:
        group = next(g for g in optimizer.param_groups
                     if any(p is trick.loss.log_vars for p in g["params"]))  # fmt: skip
        assert group["weight_decay"] == 0 and group["params"] == [trick.loss.log_vars]
        assert group["initial_lr"] == LOG_VAR_LR  # their own lr, under the run's schedule
        assert trick.loss.log_vars.abs().min() > 1e-2  # learned, from 0
    for trick, _ in kept["dwa"]:
        weights = trick.loss.current_weights()
        assert int(trick.loss.epochs) == 3 and sum(weights.values()) == pytest.approx(2)
        assert weights["review"] != pytest.approx(1.0, abs=1e-3)


def test_mt_atom_on_a_task_without_heads_is_a_clear_error():
    task = toy_lab_task()
    pool, _ = task.load()
    model, _ = task.build(pool.texts, len(pool.label_names))
    ctx = RunContext(task, model, None, seed=0, n_train=60, epochs=2, steps_per_epoch=4)
    for name in ("mt_uncertainty", "mt_dwa"):
        with pytest.raises(ValueError, match=rf"atom '{name}' .* task 'toy' has one head "
                           r"\(Task.heads is None\): set Task.heads"):  # fmt: skip
            ATOMS[name].make_trick(ctx)
    with pytest.raises(TypeError, match="Task.heads must be None or a non-empty dict"):
        Task("bad", data=task.data, build=task.build, heads=lambda logits, labels: {})
