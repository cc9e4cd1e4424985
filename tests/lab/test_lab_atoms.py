"""Combo parsing and grid planning: which cells run, and the step-matched base."""

from __future__ import annotations

import pytest

from danlu.lab.atoms import ATOMS, canonical_combo, parse_combo, step_key
from danlu.lab.runner import pending_cells, plan_cells


def test_combo_is_parsed_in_registry_order():
    assert [a.name for a in parse_combo("ema+fgm")] == ["fgm", "ema"]
    assert canonical_combo("rdrop+fgm") == canonical_combo("fgm+rdrop") == "fgm+rdrop"
    assert parse_combo("base") == []


@pytest.mark.parametrize(
    ("combo", "message"),
    [
        ("fgm+nope", "unknown trick 'nope'"),
        ("fgm+fgm", "names a trick twice"),
        ("base+fgm", "cannot be stacked"),
        ("focal+smooth", "two loss tricks"),
        ("fgm+pgd", "two adversarial tricks"),
        ("ema+swa", "two weights tricks"),
        ("", "non-empty"),
    ],
)
def test_bad_combo_is_refused_with_a_clear_message(combo, message):
    with pytest.raises(ValueError, match=message):
        parse_combo(combo)


def test_unknown_trick_error_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        parse_combo("fmg")
    for name in ATOMS:
        assert name in str(err.value)


def test_rdrop_stacks_with_adversarial_and_mixup():
    assert canonical_combo("mixup+rdrop+fgm") == "mixup+fgm+rdrop"


def test_step_key_names_only_the_data_atoms():
    assert step_key("base") is None and step_key("fgm+ema") is None
    assert step_key("eda") == step_key("eda+fgm") == "eda"


def test_step_matched_base_is_planned_exactly_for_combos_with_more_steps():
    cells = plan_cells("t", ["base", "fgm", "eda", "fgm+eda", "ema"], seeds=[0, 1], n_train=[50, 100])
    matched = [c for c in cells if c.match is not None]
    # one step-matched base per (seed, n_train) for the single step key "eda"
    assert sorted((c.seed, c.n_train) for c in matched) == [(0, 50), (0, 100), (1, 50), (1, 100)]
    assert all(c.combo == "base" and c.match == "eda" for c in matched)
    assert {c.combo for c in cells if c.steps_match == "eda"} == {"eda", "eda+fgm"}
    assert all(c.steps_match is None for c in cells if "eda" not in c.combo)
    assert len(cells) == 2 * 2 * (5 + 1)
    assert not [c for c in plan_cells("t", ["base", "fgm"], seeds=[0]) if c.match]


def test_grid_is_canonicalised_and_deduplicated():
    cells = plan_cells("t", ["base", "ema+fgm", "fgm+ema"], seeds=[0])
    assert [c.combo for c in cells] == ["base", "fgm+ema"]


@pytest.mark.parametrize(("combos", "seeds"), [([], [0]), (["base"], [])])
def test_empty_grid_is_refused(combos, seeds):
    with pytest.raises(ValueError, match="empty"):
        plan_cells("t", combos, seeds=seeds)


def test_pending_cells_skips_finished_ones():
    cells = plan_cells("t", ["base", "fgm"], seeds=[0, 1])
    done = [{"task": "t", "combo": "fgm", "seed": 1, "n_train": None, "match": None}]
    assert [(c.combo, c.seed) for c in pending_cells(cells, done)] == [
        ("base", 0), ("fgm", 0), ("base", 1)
    ]  # fmt: skip
