"""danlu.lab.stats against scipy.stats and hand computations on fixed numbers."""

import itertools
import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.weightstats import ttost_paired

from danlu.lab.stats import (
    Delta,
    Summary,
    detectable_effect,
    holm,
    multi_bootstrap,
    p_fresh_seed,
    paired_delta,
    seeds_needed,
    sign_flip_p,
    summarize,
    t_p,
    tost_p,
)

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


def test_all_equal_deltas_are_flat_and_tested_by_sign_flips():
    # 0.81-0.80 and 0.71-0.70 differ in the last float bit: still "all equal"
    for a, b in [([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]), ([0.81, 0.71, 0.61], [0.80, 0.70, 0.60])]:
        d = paired_delta(a, b)
        assert d.flat and d.std == 0.0 and math.isnan(d.p_t)
        assert d.ci_low == d.ci_high == d.boot_low == d.boot_high == d.mean
        assert d.mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert paired_delta([0.81, 0.71, 0.61], [0.80, 0.70, 0.60]).p == 0.25  # 2 / 2**3


def test_identical_deltas_do_not_flip_on_a_millionth():
    # every seed moved by +0.5 points: t-test p is undefined (scipy: 2e-57 after a 1e-6 change)
    base = np.array([0.70, 0.72, 0.69])
    same, nudged = base + 0.005, base + np.array([0.005, 0.005, 0.005 + 1e-6])
    assert sps.ttest_rel(nudged, base).pvalue < 1e-8  # the t-test alone would say "helps"
    for a in (same, nudged):
        d = paired_delta(a, base, resolution=1 / 2000)  # one example of a 2,000-example test
        assert d.flat and d.p == d.p_sign == 0.25  # what 3 seeds can show: 2 / 2**3
    d6 = paired_delta(np.r_[same, same], np.r_[base, base], resolution=1 / 2000)
    assert d6.p == pytest.approx(2 / 2**6)  # 6 seeds: the first n with p < 0.05


def _enumerated_sign_flip(d, alternative="two-sided"):
    d = np.asarray(d)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    means, observed = (signs * d).mean(1), d.mean()
    eps = 1e-12
    if alternative == "greater":
        return np.mean(means >= observed - eps)
    if alternative == "less":
        return np.mean(means <= observed + eps)
    return np.mean(np.abs(means) >= abs(observed) - eps)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_p_is_exact_against_an_enumeration(alternative):
    d = [0.012, -0.004, 0.02, 0.007, 0.015, -0.001, 0.009]
    assert sign_flip_p(d, alternative) == pytest.approx(_enumerated_sign_flip(d, alternative))
    with pytest.raises(ValueError, match="alternative"):
        sign_flip_p(d, "both")


def test_tost_against_a_hand_computation_and_statsmodels():
    d = np.array([0.004, -0.003, 0.006, 0.001, 0.002])
    m, n = 0.01, d.size
    se = d.std(ddof=1) / math.sqrt(n)
    by_hand = max(sps.t.sf((d.mean() + m) / se, n - 1), sps.t.cdf((d.mean() - m) / se, n - 1))
    assert float(tost_p(d, m)) == pytest.approx(by_hand)
    assert float(tost_p(d, m)) == pytest.approx(ttost_paired(d, np.zeros(n), -m, m)[0])
    assert float(tost_p(d + 0.02, m)) > 0.5  # well outside the margin: no equivalence
    rows = np.stack([d, d + 0.02])
    assert tost_p(rows, m) == pytest.approx([tost_p(d, m), tost_p(d + 0.02, m)])
    with pytest.raises(ValueError, match="margin"):
        tost_p(d, 0.0)


def test_multi_bootstrap_equals_a_plain_loop():
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 30)) < 0.8, rng.random((4, 30)) < 0.7
    mean, low, high = multi_bootstrap(a, b, n_boot=300, seed=7)
    ref = np.random.default_rng(7)
    seeds, examples = ref.integers(0, 4, (300, 4)), ref.integers(0, 30, (300, 30))
    loop = []
    for s_row, e_row in zip(seeds, examples):
        total = 0.0
        for i in s_row:
            total += sum(float(a[i, j]) - float(b[i, j]) for j in e_row) / 30
        loop.append(total / 4)
    assert mean == pytest.approx(np.mean(a) - np.mean(b))
    assert (low, high) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])))
    with pytest.raises(ValueError, match="one shape"):
        multi_bootstrap(a, b[:, :3])


def test_power_against_the_noncentral_t():
    std, n, alpha = 0.015, 6, 0.01
    effect = detectable_effect(std, n, alpha)
    crit = sps.t.ppf(1 - alpha / 2, n - 1)
    ncp = effect / std * math.sqrt(n)
    power = sps.nct.sf(crit, n - 1, ncp) + sps.nct.cdf(-crit, n - 1, ncp)
    assert power == pytest.approx(0.8, abs=1e-4)
    k = seeds_needed(0.01, std, alpha)
    assert detectable_effect(std, k, alpha) <= 0.01 < detectable_effect(std, k - 1, alpha)
    assert math.isnan(detectable_effect(0.0, 5, alpha)) and math.isnan(detectable_effect(std, 1, alpha))
    with pytest.raises(ValueError, match="effect and std"):
        seeds_needed(0.0, std, alpha)


def test_p_fresh_seed_is_the_t_predictive_probability():
    d = np.array([0.01, 0.02, -0.005, 0.015, 0.0])
    scale = d.std(ddof=1) * math.sqrt(1 + 1 / d.size)
    assert p_fresh_seed(d) == pytest.approx(sps.t.cdf(d.mean() / scale, d.size - 1))
    assert p_fresh_seed(-d) == pytest.approx(1 - p_fresh_seed(d))
    assert p_fresh_seed([0.01, 0.01, 0.01]) == 1.0 and p_fresh_seed([0.0, 0.0]) == 0.5


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
    rows = np.array([[0.01, 0.04, 0.03, 0.005], [0.4, 0.9, 0.02, np.nan]])
    assert holm(rows)[0] == pytest.approx(holm(rows[0]))  # row by row
    assert holm(rows)[1, :3] == pytest.approx(holm(rows[1, :3])) and np.isnan(holm(rows)[1, 3])


def test_holm_caps_at_one_and_keeps_order():
    # sorted: 0.02*3=0.06, 0.4*2=0.8, 0.9*1=0.9
    assert holm([0.4, 0.9, 0.02]) == pytest.approx([0.8, 0.9, 0.06])
    # 0.7*2=1.4 -> 1; 0.8*1=0.8 -> raised to 1
    assert holm([0.8, 0.7]).tolist() == [1.0, 1.0]


def test_holm_skips_untestable_comparisons():
    out = holm([0.01, float("nan"), 0.04])  # m = 2, not 3
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04)
    assert math.isnan(out[1])
    assert holm([]).size == 0


def test_holm_rejects_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])




# --- edges the mutation run (docs/mutation.md) found untested ---------------------------


def test_two_values_have_an_interval_and_one_value_warns_nothing():
    s = summarize([0.80, 0.84])
    half = sps.t.ppf(0.975, 1) * np.std([0.80, 0.84], ddof=1) / math.sqrt(2)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.82 - half, 0.82 + half))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "degrees of freedom <= 0" from numpy
        assert math.isnan(summarize([0.7]).std)
        assert p_fresh_seed([0.01]) == 1.0
    with pytest.raises(ValueError, match="^values must"):
        summarize([])


def test_t_p_equals_scipy_for_every_alternative_and_is_nan_without_spread():
    d = np.array([0.012, -0.004, 0.02, 0.007, 0.015])
    for alternative in ("two-sided", "greater", "less"):
        ref = sps.ttest_1samp(d, 0.003, alternative=alternative).pvalue
        assert float(t_p(d, alternative, shift=0.003)) == pytest.approx(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(t_p(np.full(3, 0.01))) and np.isnan(t_p(np.zeros(3)))
    with pytest.raises(ValueError, match="alternative"):
        t_p(d, "less ")


def test_tost_when_the_lower_bound_decides():
    d = np.array([-0.006, -0.008, -0.007, -0.005, -0.009])  # close to -margin
    ref = ttost_paired(d, np.zeros(5), -0.01, 0.01)[0]
    assert float(tost_p(d, 0.01)) == pytest.approx(ref)
    assert float(tost_p(d, 0.01)) == pytest.approx(sps.ttest_1samp(d, -0.01, alternative="greater").pvalue)


def test_flat_is_inclusive_and_relative_to_the_mean():
    assert paired_delta([0.5, 0.625], [0.5, 0.5], resolution=0.125).flat  # spread == resolution
    assert not paired_delta([0.5, 0.625], [0.5, 0.5], resolution=0.12).flat
    assert not paired_delta([0.51, 0.51 + 1.5e-12], [0.5, 0.5]).flat  # above the 1e-12 floor
    assert paired_delta([6.0, 6.0 + 3e-12], [1.0, 1.0]).flat  # floor scales with |mean| = 5


def test_sign_flip_above_sixteen_seeds_is_a_seeded_monte_carlo_estimate():
    d = np.random.default_rng(4).normal(0.004, 0.01, 17)
    first = sign_flip_p(d)
    assert sign_flip_p(d) == first  # seeded
    assert first == pytest.approx(_enumerated_sign_flip(d), abs=0.005)
    with pytest.raises(ValueError, match="^deltas must"):
        sign_flip_p([])


def test_paired_delta_fields_and_argument_checks():
    one = paired_delta([0.9], [0.8])
    assert one.flat is False and one.n == 1
    assert all(math.isnan(x) for x in (one.std, one.ci_low, one.ci_high, one.boot_low,
                                       one.boot_high, one.p, one.p_t, one.p_sign))  # fmt: skip
    two = paired_delta([0.82, 0.85], [0.80, 0.81])
    assert two.p == pytest.approx(sps.ttest_rel([0.82, 0.85], [0.80, 0.81]).pvalue)
    d = paired_delta(A, B, n_boot=1000, seed=2)
    assert d.flat is False and d.p_t == d.p and d.p_sign == pytest.approx(sign_flip_p(np.subtract(A, B)))
    diffs = np.subtract(A, B)
    boot = diffs[np.random.default_rng(2).integers(0, 5, size=(1000, 5))].mean(axis=1)
    assert (d.boot_low, d.boot_high) == pytest.approx(tuple(np.percentile(boot, [2.5, 97.5])))
    assert paired_delta(A, B, n_boot=1).n == 5
    assert paired_delta([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]).n == 3
    with pytest.raises(ValueError, match="n_boot"):
        paired_delta(A, B, n_boot=True)
    with pytest.raises(ValueError, match="resolution must be >= 0"):
        paired_delta(A, B, resolution=-1.0)
    with pytest.raises(ValueError, match="^a must"):
        paired_delta([], B)
    with pytest.raises(ValueError, match="^b must"):
        paired_delta(A, [float("nan")] * 5)


def test_holm_accepts_the_ends_of_the_unit_interval_and_names_bad_values():
    assert holm([0.0, 1.0]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError, match=r"1\.5"):
        holm([0.2, 1.5])


def test_power_edges_and_a_missing_statsmodels(monkeypatch):
    import sys

    assert math.isfinite(detectable_effect(0.01, 2, 0.05))
    assert seeds_needed(1.0, 0.001, 0.05) == 2  # a huge effect still needs a pair
    with pytest.raises(ValueError, match="effect and std"):
        seeds_needed(0.01, 0.0, 0.05)
    monkeypatch.setitem(sys.modules, "statsmodels.stats.power", None)
    with pytest.raises(ImportError, match=r"for power analysis .* pip install 'danlu\[lab\]'"):
        detectable_effect(0.01, 5, 0.05)


def test_p_fresh_seed_with_two_seeds():
    d = np.array([0.01, 0.03])
    scale = d.std(ddof=1) * math.sqrt(1.5)
    assert p_fresh_seed(d) == pytest.approx(sps.t.cdf(d.mean() / scale, 1))


def test_empty_inputs_name_the_argument():
    with pytest.raises(ValueError, match="^deltas must"):
        p_fresh_seed([])
    d = np.array([0.01, 0.02, -0.005])
    assert float(t_p(d)) == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue)  # default: no shift
    with pytest.raises(ValueError, match="one shape"):
        multi_bootstrap(np.zeros((2, 0)), np.zeros((2, 0)))
