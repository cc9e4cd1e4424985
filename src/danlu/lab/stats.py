"""Statistics for the lab: per-combo summaries, paired deltas over seeds (t-test and exact
sign-flip test), the paired equivalence test (TOST), Holm's correction, power, and the
multi-bootstrap over seeds × test examples.

numpy only at import; scipy and statsmodels (extra ``lab``) are imported inside the
functions that need them. The group-sequential verdicts built on these live in
:mod:`danlu.lab.sequential`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from danlu._optional import require

__all__ = [
    "Summary", "Delta", "summarize", "paired_delta", "holm", "sign_flip_p", "t_p", "tost_p",
    "detectable_effect", "seeds_needed", "p_fresh_seed", "multi_bootstrap",
]  # fmt: skip

_EXACT = 16  # the sign-flip test enumerates all 2**n sign patterns up to n = 16 (65,536)


def _scipy_stats():
    return require("scipy.stats", "lab", "the lab's statistics")


@dataclass(frozen=True)
class Summary:
    """``n`` values: mean, sample std (ddof=1) and the 95% t confidence interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Delta:
    """Paired deltas ``a - b``: mean, std, 95% t CI, 95% paired-bootstrap percentile CI,
    the paired t-test p-value ``p_t``, the exact sign-flip p-value ``p_sign`` and ``p``, the
    one a verdict uses: ``p_t``, or ``p_sign`` when the deltas are ``flat`` (their spread is
    below the metric's resolution, where a t-test divides by a zero it cannot estimate).
    p-values are uncorrected; ``nan`` below two pairs."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    boot_low: float
    boot_high: float
    p: float
    p_t: float
    p_sign: float
    flat: bool


def _as_values(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-d sequence of numbers, got {values!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must hold finite numbers only, got {values!r}")
    return arr


def _t_interval(mean: float, std: float, n: int, level: float = 0.95) -> tuple[float, float]:
    if n < 2:
        return math.nan, math.nan
    half = float(_scipy_stats().t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def summarize(values: Sequence[float]) -> Summary:
    """Mean, sample std (ddof=1) and 95% t CI of ``values``; with one value std and CI are nan.

    Example:
        >>> s = summarize([0.80, 0.82, 0.84])
        >>> round(s.mean, 2), round(s.std, 2), round(s.ci_low, 3)
        (0.82, 0.02, 0.77)
    """
    arr = _as_values(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if n > 1 else math.nan
    return Summary(n, mean, std, *_t_interval(mean, std, n))


def sign_flip_p(deltas: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact sign-flip (randomisation) p-value of the mean of paired ``deltas`` being 0.

    Under "no effect" each seed's delta is as likely to have either sign, so the mean is
    compared with its value under all ``2**n`` sign patterns (``scipy.stats.permutation_test``,
    exact up to n = 16, Monte Carlo with 65,536 patterns above). It needs no normality, and
    it says what n seeds *can* show: even n identical positive deltas give p = 2 / 2**n
    (two-sided), 0.25 at 3 seeds, 0.0625 at 5; p < 0.05 needs at least 6 seeds.

    Example:
        >>> sign_flip_p([0.005, 0.005, 0.005])
        0.25
    """
    d = _as_values(deltas, "deltas")
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    res = _scipy_stats().permutation_test(
        (d,), np.mean, permutation_type="samples", vectorized=True, alternative=alternative,
        n_resamples=np.inf if d.size <= _EXACT else 2**_EXACT, rng=np.random.default_rng(0),
    )  # fmt: skip
    return float(min(1.0, res.pvalue))


def t_p(deltas: np.ndarray, alternative: str = "two-sided", shift: float = 0.0) -> np.ndarray:
    """Paired t-test p-values of ``mean(deltas) == shift`` along the last axis (vectorised
    for the simulations; equals ``scipy.stats.ttest_1samp``). ``nan`` with zero spread."""
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    d = np.asarray(deltas, dtype=np.float64)
    n = d.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (d.mean(-1) - shift) / (d.std(-1, ddof=1) / math.sqrt(n))
        t = np.where(np.isfinite(t), t, np.nan)
    dist = _scipy_stats().t(n - 1)
    if alternative == "two-sided":
        return 2 * dist.sf(np.abs(t))
    return dist.sf(t) if alternative == "greater" else dist.cdf(t)


def tost_p(deltas: np.ndarray, margin: float) -> np.ndarray:
    """Paired equivalence test (TOST, two one-sided t-tests) of ``-margin < mean < margin``
    along the last axis: ``max(p(mean <= -margin), p(mean >= margin))``. Small p: the mean
    delta is within ±margin. Equals statsmodels' ``ttost_paired(a, b, -margin, margin)[0]``
    (written out because that one takes a single pair of 1-d arrays, and the simulations
    test thousands of grids at once).

    Example:
        >>> round(float(tost_p([0.001, -0.002, 0.0, 0.001], margin=0.01)), 4)
        0.0004
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin!r}")
    lower = t_p(deltas, "greater", shift=-margin)
    upper = t_p(deltas, "less", shift=margin)
    return np.maximum(lower, upper)


def _flat(d: np.ndarray, resolution: float) -> bool:
    return bool(np.ptp(d) <= max(resolution, 1e-12 * max(1.0, abs(float(d.mean())))))


def paired_delta(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 10_000,
    seed: int = 0,
    resolution: float = 0.0,
) -> Delta:
    """Paired comparison of ``a`` against ``b`` (element i of each = the same seed).

    The bootstrap resamples pairs with a ``numpy`` Generator seeded by ``seed`` (the same
    inputs always give the same CI). ``p_t`` is ``scipy.stats.ttest_rel``, ``p_sign`` the
    exact sign-flip test. Deltas whose spread is at most ``resolution`` (e.g. one test
    example, 1/N, for accuracy) are *flat*: the t-test's variance estimate is then zero and
    its p meaningless (0 or 1e-57, flipped by a 1e-6 change), so ``p`` is the sign-flip p,
    which says what n seeds can show (2 / 2**n at best).

    Args:
        a, b: metric values per seed, the same length (>= 1).
        n_boot: bootstrap resamples (>= 1000 for a stable 95% interval).
        seed: seed of the bootstrap Generator.
        resolution: the metric's resolution (>= 0); spreads at or below it count as flat.

    Example:
        >>> d = paired_delta([0.82, 0.85, 0.84], [0.80, 0.81, 0.83])
        >>> round(d.mean, 4), round(d.p, 3), d.p_sign
        (0.0233, 0.118, 0.25)
    """
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(
            f"paired_delta needs one value per seed in both a and b, got {a_arr.size} and "
            f"{b_arr.size}; pair them by seed first"
        )
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an int >= 1 (10_000 recommended), got {n_boot!r}")
    if not resolution >= 0:
        raise ValueError(f"resolution must be >= 0 (e.g. 1 / test size), got {resolution!r}")
    d = a_arr - b_arr
    n = int(d.size)
    mean = float(d.mean())
    nan = math.nan
    if n < 2:
        return Delta(n, mean, nan, nan, nan, nan, nan, nan, nan, nan, False)
    p_sign = sign_flip_p(d)
    if _flat(d, resolution):
        return Delta(n, mean, 0.0, mean, mean, mean, mean, p_sign, nan, p_sign, True)
    std = float(d.std(ddof=1))
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    boot_low, boot_high = np.percentile(boot, [2.5, 97.5])
    p = float(_scipy_stats().ttest_rel(a_arr, b_arr).pvalue)
    ci = _t_interval(mean, std, n)
    return Delta(n, mean, std, *ci, float(boot_low), float(boot_high), p, p, p_sign, False)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values along the last axis, in the input order.

    The i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``. ``nan``
    entries (comparisons that could not be tested, e.g. one seed) stay ``nan`` and do not
    count towards m. Vectorised: a (grids, m) array is corrected row by row.

    Example:
        >>> holm([0.01, 0.04, 0.03]).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise ValueError(f"p-values must lie in [0, 1] (or be nan), got {np.asarray(pvalues)!r}")
    if p.size == 0:
        return p.copy()
    order = np.argsort(np.where(np.isnan(p), np.inf, p), axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, axis=-1)  # nan last
    m = (~np.isnan(p)).sum(axis=-1, keepdims=True)
    scaled = (m - np.arange(p.shape[-1])) * ranked
    adjusted = np.minimum(1.0, np.fmax.accumulate(scaled, axis=-1))
    adjusted[np.isnan(ranked)] = np.nan
    out = np.empty_like(p)
    np.put_along_axis(out, order, adjusted, axis=-1)
    return out


def _power():
    return require("statsmodels.stats.power", "lab", "power analysis").TTestPower()


def detectable_effect(std: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean delta that a two-sided paired t-test at level ``alpha`` on
    ``n`` seeds detects with probability ``power``, given the per-seed delta ``std``
    (statsmodels ``TTestPower``). nan below 2 seeds or without spread.

    Example:
        >>> round(detectable_effect(0.015, 3, 0.05), 3)
        0.049
    """
    if n < 2 or not std > 0:
        return math.nan
    return float(_power().solve_power(nobs=n, alpha=alpha, power=power)) * std


def seeds_needed(effect: float, std: float, alpha: float, power: float = 0.8) -> int:
    """Seeds a two-sided paired t-test at level ``alpha`` needs to detect a true mean delta
    ``effect`` with probability ``power`` given the per-seed delta ``std``; at least 2.

    Example:
        >>> seeds_needed(0.02, 0.015, 0.05)
        7
    """
    if not effect > 0 or not std > 0:
        raise ValueError(f"effect and std must be > 0, got effect={effect!r}, std={std!r}")
    n = float(_power().solve_power(effect_size=effect / std, alpha=alpha, power=power))
    # statsmodels' root finder gives nan when even 2 seeds are more than enough
    return max(2, math.ceil(n)) if math.isfinite(n) else 2


def p_fresh_seed(deltas: Sequence[float]) -> float:
    """Probability that the combo beats its baseline on a new seed: the t predictive
    distribution of one more paired delta, ``T_{n-1}(mean / (std * sqrt(1 + 1/n)))``. With
    flat deltas (no spread) the share of positive deltas (ties count half).

    Example:
        >>> round(p_fresh_seed([0.01, 0.02, -0.005, 0.015]), 3)
        0.766
    """
    d = _as_values(deltas, "deltas")
    n = d.size
    if n < 2 or _flat(d, 0.0):
        return float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
    scale = float(d.std(ddof=1)) * math.sqrt(1 + 1 / n)
    return float(_scipy_stats().t.cdf(d.mean() / scale, n - 1))


def multi_bootstrap(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """The multi-bootstrap (Sellam et al. 2022, MultiBERTs) of a paired accuracy delta over
    seeds × test examples: each resample draws the seeds *and* the test examples with
    replacement, so the interval covers a fresh training seed and a fresh test set from the
    same distribution: the claim is about the recipe, not one test set.

    Args:
        correct_a, correct_b: ``(seeds, examples)`` 0/1 arrays, row i = seed i of each arm.
        n_boot: resamples. seed: the numpy Generator seed. level: the interval's coverage.

    Returns:
        ``(mean delta, low, high)`` of the percentile interval.

    Example:
        >>> a = np.array([[1, 1, 0, 1], [1, 0, 1, 1]]); b = np.array([[1, 0, 0, 1], [0, 0, 1, 1]])
        >>> multi_bootstrap(a, b, n_boot=200)[0]
        0.25
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"correct_a and correct_b must be (seeds, examples) arrays of one shape, got "
            f"{a.shape} and {b.shape}"
        )
    n, m = a.shape
    d = a - b
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n, size=(n_boot, n))
    examples = rng.integers(0, m, size=(n_boot, m))
    # per-resample mean over (drawn seeds) × (drawn examples), without an (n_boot, n, m) copy
    row_means = np.stack([d[:, e].mean(axis=1) for e in examples])  # (n_boot, n)
    boot = np.take_along_axis(row_means, seeds, axis=1).mean(axis=1)
    tail = 50 * (1 - level)
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(d.mean()), float(low), float(high)

