"""danlu.lab.stats against scipy.stats and hand computations on fixed numbers."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from danlu.lab.stats import Delta, Summary, holm, paired_delta, summarize, verdict

T_975_DF2 = 4.302652729911275  # t quantile 0.975 with 2 degrees of freedom (table value)


def test_summarize_hand_computed():
    s = summarize([0.80, 0.82, 0.84])
    assert isinstance(s, Summary) and s.n == 3
    assert s.mean == pytest.approx(0.82)
    assert s.std == pytest.approx(0.02)  # sqrt(((-.02)^2 + 0 + .02^2) / 2)
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.82 - half, 0.82 + half))


def test_summarize_matches_scipy_t_interval():
    values = [0.61, 0.74, 0.70, 0.66, 0.69, 0.72]
    s = summarize(values)
    lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi))
    assert s.std == pytest.approx(np.std(values, ddof=1))


def test_summarize_one_value_has_no_spread_or_interval():
    s = summarize([0.7])
    assert s.n == 1 and s.mean == 0.7
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [[0.1, 0.2]], [0.1, float("inf")]])
def test_summarize_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="values"):
        summarize(bad)


A = [0.83, 0.86, 0.79, 0.84, 0.81]
B = [0.80, 0.84, 0.78, 0.80, 0.80]


def test_paired_delta_matches_scipy_ttest_rel_and_t_interval():
    d = paired_delta(A, B)
    diffs = np.subtract(A, B)  # [0.03, 0.02, 0.01, 0.04, 0.01]
    assert isinstance(d, Delta) and d.n == 5
    assert d.mean == pytest.approx(0.022)
    assert d.std == pytest.approx(math.sqrt(0.00068 / 4))  # sum of squared deviations by hand
    assert d.p == pytest.approx(sps.ttest_rel(A, B).pvalue)
    lo, hi = sps.t.interval(0.95, 4, loc=diffs.mean(), scale=sps.sem(diffs))
    assert (d.ci_low, d.ci_high) == pytest.approx((lo, hi))


def test_paired_delta_bootstrap_matches_scipy_percentile_bootstrap():
    a = [0.70, 0.74, 0.69, 0.75, 0.71, 0.77, 0.72, 0.70]
    b = [0.71, 0.70, 0.68, 0.71, 0.72, 0.72, 0.70, 0.69]
    d = paired_delta(a, b, n_boot=20_000, seed=3)
    ref = sps.bootstrap(
        (a, b),
        lambda x, y: np.mean(x - y),
        paired=True,
        method="percentile",
        n_resamples=20_000,
        rng=np.random.default_rng(11),
    ).confidence_interval
    assert d.boot_low == pytest.approx(ref.low, abs=0.002)
    assert d.boot_high == pytest.approx(ref.high, abs=0.002)


def test_paired_delta_bootstrap_is_seeded_and_paired():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.8, 0.02, 12), rng.normal(0.79, 0.02, 12)
    first, again = paired_delta(a, b, n_boot=1000), paired_delta(a, b, n_boot=1000)
    other = paired_delta(a, b, n_boot=1000, seed=1)
    assert (first.boot_low, first.boot_high) == (again.boot_low, again.boot_high)
    assert (first.boot_low, first.boot_high) != (other.boot_low, other.boot_high)
    first = paired_delta(A, B)
    # pairs are resampled together: the interval lies within the per-seed deltas
    assert 0.01 - 1e-12 <= first.boot_low < first.mean < first.boot_high <= 0.04 + 1e-12


def test_all_equal_deltas_give_p_one_and_zero_width_intervals():
    # 0.81-0.80 and 0.71-0.70 differ in the last float bit: still "all equal"
    for a, b in [([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]), ([0.81, 0.71, 0.61], [0.80, 0.70, 0.60])]:
        d = paired_delta(a, b)
        values = [d.mean, d.std, d.ci_low, d.ci_high, d.boot_low, d.boot_high, d.p]
        assert not any(math.isnan(v) for v in values)
        assert d.p == 1.0 and d.std == 0.0
        assert d.ci_low == d.ci_high == d.boot_low == d.boot_high == d.mean
        assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))


def test_one_pair_has_a_delta_but_no_test():
    d = paired_delta([0.9], [0.8])
    assert d.n == 1 and d.mean == pytest.approx(0.1)
    assert math.isnan(d.p) and math.isnan(d.boot_low) and math.isnan(d.ci_high)


def test_paired_delta_errors():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_delta([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="n_boot"):
        paired_delta(A, B, n_boot=0)
    with pytest.raises(ValueError, match="finite"):
        paired_delta([0.1, float("nan")], [0.1, 0.2])


def test_holm_hand_worked_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> raised to 0.06 (monotone)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_keeps_order():
    # sorted: 0.02*3=0.06, 0.4*2=0.8, 0.9*1=0.9
    assert holm([0.4, 0.9, 0.02]) == pytest.approx([0.8, 0.9, 0.06])
    # 0.7*2=1.4 -> 1; 0.8*1=0.8 -> raised to 1
    assert holm([0.8, 0.7]) == [1.0, 1.0]


def test_holm_skips_untestable_comparisons():
    out = holm([0.01, float("nan"), 0.04])  # m = 2, not 3
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert holm([]) == []


def test_holm_rejects_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def _verdict(a, b):
    d = paired_delta(a, b)
    return verdict(d.mean, holm([d.p])[0], d.n)


BASE = [0.80, 0.81, 0.79, 0.82, 0.80]


def test_verdict_clear_gain_and_clear_loss():
    gain = [x + g for x, g in zip(BASE, [0.030, 0.031, 0.029, 0.030, 0.032])]
    loss = [x - g for x, g in zip(BASE, [0.020, 0.025, 0.018, 0.022, 0.021])]
    assert _verdict(gain, BASE) == "helps"
    assert _verdict(loss, BASE) == "hurts"


def test_verdict_pure_noise_is_no_detectable_effect():
    rng = np.random.default_rng(0)
    shared = rng.normal(0.8, 0.02, size=5)  # seed effect shared by both arms
    a, b = shared + rng.normal(0, 0.01, 5), shared + rng.normal(0, 0.01, 5)
    assert _verdict(a, b) == "no detectable effect at n=5 seeds"


def test_verdict_never_from_one_seed_and_alpha_is_strict():
    assert verdict(0.05, 0.0, n=1) == "no verdict from one seed"
    assert verdict(0.05, 0.0, n=0) == "no verdict: no paired seeds"
    assert verdict(0.05, 0.05, n=4) == "no detectable effect at n=4 seeds"
    assert verdict(0.0, 0.01, n=4) == "no detectable effect at n=4 seeds"
    assert verdict(0.05, 0.04, n=4) == "helps"
    assert verdict(0.05, 0.04, n=4, alpha=0.01) == "no detectable effect at n=4 seeds"
    with pytest.raises(ValueError, match="alpha"):
        verdict(0.05, 0.04, n=4, alpha=1.5)
