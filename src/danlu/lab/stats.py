"""Statistics for the lab: per-combo summaries, paired deltas over seeds, Holm correction,
and the verdict in words.

Pure numpy; scipy (extra ``lab``) is imported inside the functions that need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from danlu._optional import require

__all__ = ["Summary", "Delta", "summarize", "paired_delta", "holm", "verdict"]

_FLAT = 1e-12  # deltas spread less than this (relative) are treated as all equal


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
    """Paired deltas ``a - b``: mean, std, 95% t CI, 95% paired-bootstrap percentile CI and
    the paired t-test p-value (uncorrected; ``nan`` below two pairs)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    boot_low: float
    boot_high: float
    p: float


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
    t = require("scipy.stats", "lab", "confidence intervals").t.ppf(0.5 + level / 2, n - 1)
    half = float(t) * std / math.sqrt(n)
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


def paired_delta(
    a: Sequence[float], b: Sequence[float], n_boot: int = 10_000, seed: int = 0
) -> Delta:
    """Paired comparison of ``a`` against ``b`` (element i of each = the same seed).

    The bootstrap resamples pairs with a ``numpy`` Generator seeded by ``seed`` (the same
    inputs always give the same CI). The p-value is ``scipy.stats.ttest_rel``. When all
    deltas are equal (zero spread) the t-test is undefined: p is 1.0 and both CIs have zero
    width at the delta, never nan; the zero spread says nothing about the seed-to-seed noise.

    Args:
        a, b: metric values per seed, the same length (>= 1).
        n_boot: bootstrap resamples (>= 1000 for a stable 95% interval).
        seed: seed of the bootstrap Generator.

    Example:
        >>> d = paired_delta([0.82, 0.85, 0.84], [0.80, 0.81, 0.83])
        >>> round(d.mean, 4), round(d.p, 3)
        (0.0233, 0.118)
    """
    a_arr, b_arr = _as_values(a, "a"), _as_values(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(
            f"paired_delta needs one value per seed in both a and b, got {a_arr.size} and "
            f"{b_arr.size}; pair them by seed first"
        )
    if not (isinstance(n_boot, int) and n_boot >= 1):
        raise ValueError(f"n_boot must be an int >= 1 (10_000 recommended), got {n_boot!r}")
    d = a_arr - b_arr
    n = int(d.size)
    mean = float(d.mean())
    if n < 2:
        return Delta(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    if np.ptp(d) <= _FLAT * max(1.0, abs(mean)):
        return Delta(n, mean, 0.0, mean, mean, mean, mean, 1.0)
    std = float(d.std(ddof=1))
    rng = np.random.default_rng(seed)
    boot = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    boot_low, boot_high = np.percentile(boot, [2.5, 97.5])
    p = require("scipy.stats", "lab", "the paired t-test").ttest_rel(a_arr, b_arr).pvalue
    return Delta(
        n, mean, std, *_t_interval(mean, std, n), float(boot_low), float(boot_high), float(p)
    )


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The i-th smallest of m p-values becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``. ``nan``
    entries (comparisons that could not be tested, e.g. one seed) stay ``nan`` and do not
    count towards m.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    bad = ~np.isnan(p) & ((p < 0) | (p > 1))
    if bad.any():
        raise ValueError(f"p-values must lie in [0, 1] (or be nan), got {list(pvalues)!r}")
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(x) for x in out]


def verdict(mean_delta: float, p_adjusted: float, n: int, alpha: float = 0.05) -> str:
    """The verdict in words: "helps", "hurts", "no detectable effect at n=K seeds", or no
    verdict below two paired seeds.

    Example:
        >>> verdict(0.02, 0.01, n=5), verdict(0.02, 0.30, n=5), verdict(0.05, 0.0, n=1)
        ('helps', 'no detectable effect at n=5 seeds', 'no verdict from one seed')
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if n < 1:
        return "no verdict: no paired seeds"
    if n < 2:
        return "no verdict from one seed"
    if p_adjusted < alpha and mean_delta > 0:
        return "helps"
    if p_adjusted < alpha and mean_delta < 0:
        return "hurts"
    return f"no detectable effect at n={n} seeds"
