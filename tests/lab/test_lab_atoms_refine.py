"""The lab atoms of encoder refinement: ``reinit`` re-draws the top block and head of the
run's model exactly as ``reinit_top_layers`` does (through a wrapper, seeded by the run's
seed), and ``ld3x`` gives layer decay 0.8 with the head at 3x the task lr."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import tiny_bert, toy_lab_task
from torch import nn

from danlu.lab.atoms import ATOMS, RunContext, canonical_combo
from danlu.nn import reinit_top_layers

pytest.importorskip("transformers")


class Wrapped(nn.Module):  # as the lab wraps HF classifiers
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model


def test_reinit_atom_matches_the_function_and_keeps_the_rest():
    model = Wrapped(tiny_bert(seed=0, num_hidden_layers=3))
    reference = copy.deepcopy(model.model)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    ctx = RunContext(toy_lab_task(), model, None, seed=5, n_train=10, epochs=1,
                     steps_per_epoch=1)  # fmt: skip
    ATOMS["reinit"].prepare_model(ctx)
    names = reinit_top_layers(reference, 1, seed=5)
    after = model.model.state_dict()
    for k, v in reference.state_dict().items():
        assert torch.equal(after[k], v), k
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(names)
    assert all(".layer.2." in k or k.startswith(("bert.pooler", "classifier")) for k in changed)
    assert canonical_combo("reinit+ld") == "ld+reinit"  # stacks with the optim family


def test_ld3x_groups():
    task = toy_lab_task()
    model = tiny_bert(seed=0)
    depth = {"bert.embeddings.word_embeddings.weight": 0, "classifier.weight": 3}
    groups = ATOMS["ld3x"].param_groups(
        model, toy_lab_task(depth_fn=lambda n: depth.get(n, 1 if ".layer.0." in n else 2))
    )
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lrs["classifier.weight"] == pytest.approx(3 * task.lr)
    assert lrs["bert.encoder.layer.1.output.dense.weight"] == pytest.approx(3 * task.lr * 0.8)
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx(3 * task.lr * 0.8**3)
    with pytest.raises(ValueError, match="two optim tricks"):
        canonical_combo("ld+ld3x")
