"""The lab's four verdicts and its adaptive seeds: a group-sequential design.

A table compares m combos with their baselines over paired seeds. Seeds are added in
*planned looks* (``3 → 4 → 5 → 6 → 8 → 10`` for ``--min-seeds 3 --max-seeds 10``); after each look,
every comparison still undecided gets one of four verdicts or more seeds:

- **helps** / **hurts**: the paired t-test (the exact sign-flip test when the deltas are
  flat) rejects "no effect";
- **equivalent within ±m**: the paired TOST rejects "|effect| >= m";
- **undecided** (at this budget): neither, at the last look.

Peeking at every look would inflate false verdicts, so each comparison's p-value is
replaced by a *sequential p-value*: the probability, under the null hypothesis, that the
smallest of its weighted p-values over the planned looks is as small as the one observed.
Under normal seed noise the t statistic is pivotal (its distribution does not depend on the
unknown noise level), so this null distribution is computed exactly enough once by
simulation (200,000 null sequences, fixed seed). The sequential p-value is a valid p-value
whatever the stopping (stopping early only raises it), and Holm's correction across the
table's comparisons then keeps the family-wise rate of false helps/hurts at alpha, and the
same for false "equivalent" (TOST at the margin is a one-sided t-test, also pivotal). The
weights ``(n_k / n_K) ** rho`` shape the design: ``rho = 0`` is Pocock's (equal nominal
levels), larger ``rho`` spends less alpha early and more at the last look (O'Brien-Fleming
like); the lab uses ``rho = 1`` (see docs/lab.md for the simulation that chose it).

Example:
    >>> looks = plan_looks(3, 10)
    >>> looks
    (3, 4, 5, 6, 8, 10)
    >>> rng = np.random.default_rng(0)
    >>> deltas = 0.03 + 0.01 * rng.standard_normal((2, 10))  # 2 combos, +3 points each
    >>> out = decide(deltas, looks, margin=0.01)
    >>> out.verdict.tolist(), out.n.tolist()  # both help; decided at 4 and 6 seeds
    ([1, 1], [4, 6])
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from danlu.lab.stats import holm, sign_flip_p, t_p, tost_p

__all__ = [
    "HELPS", "HURTS", "EQUIVALENT", "UNDECIDED", "ALPHA", "MARGIN", "RHO", "plan_looks",
    "sequential_p", "Decisions", "decide", "verdict_words",
]  # fmt: skip

HELPS, HURTS, EQUIVALENT, UNDECIDED = 1, -1, 2, 0
ALPHA = 0.05
MARGIN = 0.01  # 1 accuracy point: the smallest gain a practitioner acts on (docs/lab.md)
RHO = 1.0
_NULL_SEQUENCES = 200_000


def plan_looks(min_seeds: int, max_seeds: int) -> tuple[int, ...]:
    """The planned seed counts: the pilot ``min_seeds``, then about 1.25× more seeds per look
    (at least one more), capped at ``max_seeds``.

    Raises ValueError (naming both) unless ``2 <= min_seeds <= max_seeds``.

    Example:
        >>> plan_looks(3, 10), plan_looks(3, 4), plan_looks(5, 5)
        ((3, 4, 5, 6, 8, 10), (3, 4), (5,))
    """
    for name, value in (("min_seeds", min_seeds), ("max_seeds", max_seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2 (a paired test needs 2 seeds), got {value!r}")
    if min_seeds > max_seeds:
        raise ValueError(
            f"min_seeds ({min_seeds}) must be <= max_seeds ({max_seeds}): the pilot cannot be "
            "larger than the budget; raise --max-seeds or lower --min-seeds"
        )
    looks = [min_seeds]
    while looks[-1] < max_seeds:
        looks.append(min(max_seeds, max(looks[-1] + 1, round(looks[-1] * 1.25))))
    return tuple(looks)


def _weights(looks: tuple[int, ...], rho: float) -> np.ndarray:
    return (np.asarray(looks, dtype=np.float64) / looks[-1]) ** rho


@functools.lru_cache(maxsize=32)
def _null_statistic(looks: tuple[int, ...], alternative: str, rho: float) -> np.ndarray:
    """Sorted null draws of ``min_k p_k / w_k`` over the planned looks (normal noise; the
    t statistic is pivotal, so the noise level does not matter)."""
    z = np.random.default_rng(20261204).standard_normal((_NULL_SEQUENCES, looks[-1]))
    p = np.stack([t_p(z[:, :n], alternative) for n in looks], axis=-1)
    return np.sort((p / _weights(looks, rho)).min(axis=-1))


def sequential_p(
    p_by_look: np.ndarray, looks: tuple[int, ...], alternative: str = "two-sided", rho: float = RHO
) -> np.ndarray:
    """The sequential p-value of the per-look p-values ``p_by_look`` (last axis: the looks
    taken so far, ``nan`` for looks not taken): ``P_null(min_k p_k / w_k <= observed)``.
    With one planned look it is the p-value itself.

    Example:
        >>> float(sequential_p(np.array([0.04]), (10,)))
        0.04
    """
    p = np.asarray(p_by_look, dtype=np.float64)
    if len(looks) == 1:
        return p[..., 0]
    k = p.shape[-1]
    observed = np.fmin.reduce(p / _weights(looks, rho)[:k], axis=-1)
    null = _null_statistic(tuple(looks), alternative, float(rho))
    # (count + 1) / (N + 1): a Monte Carlo p-value that is never below the exact one's law
    out = (np.searchsorted(null, observed, side="right") + 1) / (null.size + 1)
    return np.where(np.isnan(observed), np.nan, np.minimum(1.0, out))


@dataclass(frozen=True)
class Decisions:
    """Per comparison (array shape = ``deltas.shape[:-1]``): ``verdict`` (HELPS, HURTS,
    EQUIVALENT, UNDECIDED), ``look`` (index of the deciding look, -1 if undecided), ``n``
    (seeds used), ``mean`` delta, the sequential p-values ``p_diff``/``p_eq`` and their Holm
    corrections ``holm_diff``/``holm_eq`` (at the comparison's last look)."""

    verdict: np.ndarray
    look: np.ndarray
    n: np.ndarray
    mean: np.ndarray
    p_diff: np.ndarray
    p_eq: np.ndarray
    holm_diff: np.ndarray
    holm_eq: np.ndarray
    flat: np.ndarray


def _look_p(x: np.ndarray, margin: float, resolution: float):
    """Per-comparison two-sided and TOST p at one look; flat rows use the sign-flip test."""
    p_diff, p_eq = t_p(x), tost_p(x, margin)
    flat = np.ptp(x, axis=-1) <= resolution
    for idx in zip(*np.nonzero(flat & ~np.isnan(x).any(-1))):
        row = x[idx]
        p_diff[idx] = sign_flip_p(row)
        p_eq[idx] = max(sign_flip_p(row + margin, "greater"), sign_flip_p(row - margin, "less"))
    return p_diff, p_eq, flat


def decide(
    deltas: np.ndarray,
    looks: tuple[int, ...],
    margin: float = MARGIN,
    alpha: float = ALPHA,
    resolution: float = 1e-4,
    rho: float = RHO,
) -> Decisions:
    """Run the group-sequential design on paired ``deltas`` (combo − baseline per seed).

    Args:
        deltas: ``(..., m, n)``: m comparisons of one table (the leading axes are independent
            tables, e.g. simulated grids); seeds in order, ``nan`` for seeds not run (a
            comparison decided at a look needs no later seeds).
        looks: planned seed counts (:func:`plan_looks`); ``(n,)`` is a fixed design.
        margin: the equivalence margin (> 0, in the metric's units).
        alpha: family-wise level per table, for helps/hurts and for equivalent.
        resolution: deltas whose spread is at most this are flat (sign-flip test).
        rho: the shape of the design (0 = Pocock; see the module docstring).

    An undecided comparison without the seeds of a look (a run interrupted mid-look) stays
    undecided with the seeds of its last complete look.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (e.g. 0.01 = 1 accuracy point), got {margin!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    d = np.asarray(deltas, dtype=np.float64)
    shape = d.shape[:-1]
    verdict = np.full(shape, UNDECIDED)
    look = np.full(shape, -1)
    n_used = np.zeros(shape, dtype=int)
    mean = np.full(shape, np.nan)
    flat = np.zeros(shape, dtype=bool)
    p_d = np.full((*shape, len(looks)), np.nan)
    p_e = np.full((*shape, len(looks)), np.nan)
    for k, n_k in enumerate(looks):
        if n_k > d.shape[-1]:
            break
        x = d[..., :n_k]
        active = (verdict == UNDECIDED) & ~np.isnan(x).any(-1)
        pd, pe, fl = _look_p(x, margin, resolution)
        p_d[..., k] = np.where(active, pd, np.nan)
        p_e[..., k] = np.where(active, pe, np.nan)
        mean = np.where(active, x.mean(-1), mean)
        flat = np.where(active, fl, flat)
        n_used = np.where(active, n_k, n_used)
        seq_d = sequential_p(p_d[..., : k + 1], looks, "two-sided", rho)
        seq_e = sequential_p(p_e[..., : k + 1], looks, "less", rho)
        h_d, h_e = holm(seq_d), holm(seq_e)
        differs = active & (h_d < alpha)
        equal = active & ~differs & (h_e < alpha)
        verdict = np.where(differs, np.where(mean > 0, HELPS, HURTS), verdict)
        verdict = np.where(equal, EQUIVALENT, verdict)
        look = np.where(differs | equal, k, look)
    return Decisions(verdict, look, n_used, mean, seq_d, seq_e, h_d, h_e, flat)


def verdict_words(code: int, margin: float, n: int, scale: float = 100.0) -> str:
    """A verdict code in words; ``scale`` turns the margin into points.

    Example:
        >>> verdict_words(EQUIVALENT, 0.01, 5), verdict_words(UNDECIDED, 0.01, 10)
        ('equivalent within ±1.0', 'undecided at n=10 seeds')
    """
    if code == HELPS:
        return "helps"
    if code == HURTS:
        return "hurts"
    if code == EQUIVALENT:
        return f"equivalent within ±{margin * scale:.{1 if scale == 100 else 3}f}"
    return f"undecided at n={n} seeds"

