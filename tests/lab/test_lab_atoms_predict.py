"""The lab's prediction-time atom ``tta``: its probabilities against a hand loop, and a cell
that trains exactly like base and spends its extra cost in evaluation."""

from __future__ import annotations

import numpy as np
import torch
from helpers import toy_lab_task

from danlu.data.augment import example_rng
from danlu.data.eda import EDA
from danlu.lab.atoms import ATOMS, RunContext, canonical_combo
from danlu.lab.cell import Cell, run_cell


def test_tta_atom_is_the_mean_of_view_probabilities():
    task = toy_lab_task()
    pool, _ = task.load()
    torch.manual_seed(0)
    model, encode = task.build(pool.texts, len(pool.label_names))
    model.eval()
    ctx = RunContext(task, model, None, seed=3, n_train=len(pool), epochs=1,
                     steps_per_epoch=1, encode=encode)  # fmt: skip
    texts = pool.texts[:20]
    with torch.no_grad():
        got = ATOMS["tta"].predict(ctx, model, texts)
        eda = EDA(alpha_sr=0, alpha_ri=0, alpha_rs=0.1, p_rd=0.1, n_aug=4, lang="zh")
        new = [eda.augment(t, example_rng(3, i)) for i, t in enumerate(texts)]
        views = [texts] + [[n[k] if k < len(n) else t for n, t in zip(new, texts)] for k in range(4)]
        expected = torch.stack([model(**encode(v)).softmax(-1) for v in views]).mean(0)
    assert got.shape == (20, len(pool.label_names)) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert any(v != texts for v in views[1:])


def test_tta_cell_trains_like_base_and_costs_evaluation_time():
    from danlu.lab.task import classification_loss

    assert canonical_combo("tta+fgm") == "fgm+tta"
    calls = []

    def counting_loss(model, batch):  # every forward pass of training and evaluation
        calls.append(len(batch["labels"]))
        return classification_loss(model, batch)

    task = toy_lab_task(epochs=2, loss_fn=counting_loss)
    base = run_cell(task, Cell("toy", "base", seed=0, n_train=40))
    base_calls, calls[:] = len(calls), []
    tta = run_cell(task, Cell("toy", "tta", seed=0, n_train=40))
    # evaluation only: the same training trajectory, step for step
    assert [e["train_loss"] for e in tta["epochs"]] == [e["train_loss"] for e in base["epochs"]]
    assert tta["steps"] == base["steps"]
    # each of the 2 dev evaluations and the test evaluation predicts 4 more views
    assert len(calls) - base_calls == 4 * (2 + 1)
    assert np.isfinite(tta["metrics"]["accuracy"]) and tta["eval_s"] > 0
