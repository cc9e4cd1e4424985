"""danlu.lab.sequential (the four verdicts over planned looks) and danlu.lab.simulate (its
error rates on simulated grids with known effects)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_paired

from danlu.lab.sequential import (
    EQUIVALENT,
    HELPS,
    HURTS,
    UNDECIDED,
    decide,
    plan_looks,
    sequential_p,
    verdict_words,
)
from danlu.lab.simulate import simulate


def test_planned_looks_and_their_errors():
    assert plan_looks(3, 10) == (3, 4, 5, 6, 8, 10)
    assert plan_looks(2, 3) == (2, 3) and plan_looks(4, 4) == (4,)
    assert plan_looks(5, 20) == (5, 6, 8, 10, 12, 15, 19, 20)
    with pytest.raises(ValueError, match=r"min_seeds \(5\) must be <= max_seeds \(3\)"):
        plan_looks(5, 3)
    with pytest.raises(ValueError, match="min_seeds must be an int >= 2"):
        plan_looks(1, 3)


def _t_p(x):
    return sps.ttest_1samp(x, 0.0, axis=-1).pvalue


def test_sequential_p_is_the_p_itself_for_one_look_and_uniform_under_the_null():
    assert float(sequential_p(np.array([0.03]), (10,))) == 0.03
    looks = (3, 4, 6, 8, 10)
    rng = np.random.default_rng(123)  # not the seed of the calibration
    z = rng.standard_normal((20_000, 10))
    p = np.stack([_t_p(z[:, :n]) for n in looks], -1)
    seq = sequential_p(p, looks, "two-sided")
    for level in (0.01, 0.05, 0.2):
        assert np.mean(seq <= level) == pytest.approx(level, abs=0.006)
    # peeking without the correction: the smallest of 5 looks' p is far too often < 0.05
    assert np.mean(p.min(-1) <= 0.05) > 0.10
    # a p-value seen after fewer looks only counts for more (stopping early is conservative)
    assert np.all(sequential_p(p[:, :2], looks) >= seq - 1e-12)


def test_fixed_design_is_the_paired_t_test_and_tost_with_holm():
    rng = np.random.default_rng(0)
    deltas = np.stack([0.03 + 0.01 * rng.standard_normal(6), 0.002 + 0.004 * rng.standard_normal(6),
                       -0.02 + 0.01 * rng.standard_normal(6), 0.02 * rng.standard_normal(6)])  # fmt: skip
    out = decide(deltas, (6,), margin=0.01)
    p = _t_p(deltas)
    eq = np.array([ttost_paired(d, np.zeros(6), -0.01, 0.01)[0] for d in deltas])

    def holm(ps):  # textbook step-down
        order, adj, run = np.argsort(ps), np.empty(len(ps)), 0.0
        for rank, i in enumerate(order):
            run = max(run, min(1.0, (len(ps) - rank) * ps[i]))
            adj[i] = run
        return adj

    assert out.holm_diff == pytest.approx(holm(p)) and out.holm_eq == pytest.approx(holm(eq))
    expected = [HELPS if h < 0.05 and d.mean() > 0 else HURTS if h < 0.05 else
                EQUIVALENT if e < 0.05 else UNDECIDED
                for h, e, d in zip(holm(p), holm(eq), deltas)]  # fmt: skip
    assert out.verdict.tolist() == expected == [HELPS, EQUIVALENT, HURTS, UNDECIDED]
    assert out.n.tolist() == [6] * 4


def test_adaptive_design_stops_decided_comparisons_and_waits_for_missing_seeds():
    rng = np.random.default_rng(0)
    deltas = np.stack([0.04 + 0.005 * rng.standard_normal(10), 0.03 * rng.standard_normal(10)])
    looks = plan_looks(3, 10)
    out = decide(deltas, looks)
    assert out.verdict[0] == HELPS and out.n[0] < 10 and out.look[0] == looks.index(out.n[0])
    assert out.verdict[1] == UNDECIDED and out.n[1] == 10 and out.look[1] == -1
    # the decided comparison needs none of its later seeds; an interrupted look waits
    partial = deltas.copy()
    partial[0, out.n[0]:] = np.nan
    partial[1, 7:] = np.nan
    again = decide(partial, looks)
    assert again.verdict.tolist() == [HELPS, UNDECIDED] and again.n.tolist() == [out.n[0], 6]


def test_flat_deltas_use_the_sign_flip_test():
    flat = np.full((1, 3), 0.005)
    out = decide(flat, (3,), resolution=1e-4)
    assert out.flat[0] and out.holm_diff[0] == 0.25 and out.verdict[0] == UNDECIDED
    six = decide(np.full((1, 6), 0.005), (6,), resolution=1e-4)
    assert six.holm_diff[0] == pytest.approx(2 / 64) and six.verdict[0] == HELPS


def test_errors_and_words():
    with pytest.raises(ValueError, match="margin must be > 0"):
        decide(np.zeros((1, 3)), (3,), margin=0.0)
    with pytest.raises(ValueError, match="alpha"):
        decide(np.zeros((1, 3)), (3,), alpha=1.0)
    assert verdict_words(HELPS, 0.01, 4) == "helps" and verdict_words(HURTS, 0.01, 4) == "hurts"
    assert verdict_words(EQUIVALENT, 0.01, 4) == "equivalent within ±1.0"
    assert verdict_words(UNDECIDED, 0.01, 7) == "undecided at n=7 seeds"


def test_simulated_error_rates_and_savings():
    # 2,000 grids of 5 combos each, fixed seeds (docs/lab.md has 5,000 per row)
    null = simulate(2000, effect=0.0, noise=0.0075, seed=1)
    assert null.false_differ <= 0.05
    at_margin = simulate(2000, effect=0.01, noise=0.0075, seed=2)
    assert at_margin.false_equivalent <= 0.05
    clear = simulate(2000, effect=0.02, noise=0.005, seed=3)
    assert clear.agreement >= 0.95 and clear.cells <= 0.60
