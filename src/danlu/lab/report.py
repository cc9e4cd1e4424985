"""The lab report: from the records of ``results.jsonl`` to tables with paired deltas and
the four verdicts of the group-sequential design (:mod:`danlu.lab.sequential`: helps, hurts,
equivalent within ±m, undecided), each against a named baseline with Holm's correction,
plus per-example statistics from the stored test predictions (multi-bootstrap over seeds ×
examples, P(beats the baseline on a fresh seed), flipped examples), diverged runs, the
convergence control, interaction lines and cost ratios (:func:`build_report`), rendered as
markdown (:func:`render_markdown`) and two PNG plots (:func:`plot_deltas`, :func:`plot_cost`).

:func:`write_report` does all of it for one output directory. matplotlib, scipy and
statsmodels (extra ``lab``) are imported only when a report is built or drawn.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from danlu._optional import require
from danlu.lab.cell import CONTROL
from danlu.lab.results import labels_path, read_predictions, read_results
from danlu.lab.sequential import (
    ALPHA,
    EQUIVALENT,
    HELPS,
    HURTS,
    MARGIN,
    RHO,
    UNDECIDED,
    decide,
    verdict_words,
)  # fmt: skip
from danlu.lab.stats import (
    Delta,
    Summary,
    detectable_effect,
    holm,
    multi_bootstrap,
    p_fresh_seed,
    paired_delta,
    seeds_needed,
    summarize,
)  # fmt: skip

__all__ = [
    "Design", "Comparison", "Row", "Interaction", "Table", "Report", "build_report",
    "render_markdown", "plot_deltas", "plot_cost", "write_report", "read_design",
    "write_design", "undecided_combos", "CONTROL",
]  # fmt: skip

RULE = ("a cell diverged when a training loss was not finite or its selected model predicts "
        "one class for every dev example")  # fmt: skip


@dataclass(frozen=True)
class Design:
    """How the seeds were planned: ``looks`` (seed counts; one look = a fixed design), the
    equivalence ``margin`` (metric units), ``alpha`` and the design shape ``rho``;
    ``time_steps`` maps a costly combo to the step budget of its time-matched base."""

    looks: tuple[int, ...] | None = None
    margin: float = MARGIN
    alpha: float = ALPHA
    rho: float = RHO
    adaptive: bool = False
    metric: str = "accuracy"
    time_steps: dict[str, int] = field(default_factory=dict)


def read_design(out: str | os.PathLike) -> Design:
    """``out/design.json`` (written by the runner), or a fixed design when there is none."""
    path = Path(out) / "design.json"
    if not path.exists():
        return Design()
    data = json.loads(path.read_text(encoding="utf-8"))
    looks = data.get("looks")
    return Design(**{**data, "looks": tuple(looks) if looks else None})


def write_design(out: str | os.PathLike, design: Design) -> None:
    (Path(out) / "design.json").write_text(
        json.dumps(asdict(design), indent=1, sort_keys=True) + "\n", encoding="utf-8"
    )


@dataclass(frozen=True)
class Comparison:
    """A combo's paired comparison with one baseline: the delta over the seeds the design
    used, the sequential p-values with Holm (difference and equivalence), the verdict, and
    per-example figures when the predictions were stored."""

    baseline: str
    delta: Delta
    code: int
    verdict: str
    look: int
    p_seq: float
    p_holm: float
    p_eq_holm: float
    p_fresh: float
    multi: tuple[float, float, float] | None = None
    flips: tuple[int, int] | None = None
    detectable: float = math.nan
    needed: int | None = None


@dataclass(frozen=True)
class Row:
    """One combo of a table; ``match`` is set for a base variant (step-, time-matched, control)."""

    combo: str
    match: str | None
    summary: Summary
    comparisons: tuple[Comparison, ...]
    time_ratio: float
    mem_ratio: float
    steps_ratio: float
    eval_ratio: float = math.nan

    @property
    def label(self) -> str:
        return base_label(self.match) if self.match else self.combo


def base_label(match: str) -> str:
    """The words for a base variant's match key."""
    if match == CONTROL:
        return "base (2× epochs, convergence control)"
    if match.startswith("time:"):
        return f"base (time-matched to {match[5:]})"
    return f"base (step-matched to {match})"


@dataclass(frozen=True)
class Interaction:
    """A stack A+B(+C) against the better (by mean) of its single atoms, paired over seeds."""

    stack: str
    singles: tuple[str, ...]
    best_single: str
    delta: Delta
    p_holm: float
    words: str


@dataclass(frozen=True)
class Table:
    """Everything about one ``n_train`` value (``None`` = the full training pool)."""

    n_train: int | None
    rows: tuple[Row, ...]
    interactions: tuple[Interaction, ...]
    flags: tuple[str, ...]
    diverged: tuple[str, ...] = ()
    control: Delta | None = None


@dataclass(frozen=True)
class Report:
    """A built report; ``scale`` is 100 when the metric is a fraction (shown in points)."""

    task: str
    metric: str
    seeds: tuple[int, ...]
    n_cells: int
    smoke: bool
    scale: float
    tables: tuple[Table, ...]
    design: Design = field(default_factory=Design)
    full_cells: int = 0
    tested: str = "model selected on dev"


def _tested(records: list[dict]) -> str:
    """Which epoch's model the test scores are of, from the records."""
    if any("selected_epoch" not in r for r in records):
        return "model selected on dev"  # records written before selection was a setting
    if all(r["selected_epoch"] == len(r["epochs"]) for r in records):
        return "model at the last epoch"
    return "model of the best dev epoch"


_COST = ("wall_s", "peak_mem_mb", "steps", "eval_s")  # the ratio columns, in Row order
Cells = dict[tuple[str, str | None], dict[int, dict]]  # (combo, match) -> {seed: record}


def _cost(record: dict, key: str) -> float:
    """A cost figure; time is the training time (augmentation + optimizer steps) when the
    record has it, else the cell's wall time."""
    if key == "wall_s" and "train_s" in record:
        return float(record["train_s"])
    return float(record.get(key, math.nan))


def _ratio(num: list[float], den: list[float]) -> float:
    d = float(np.mean(den))
    return float(np.mean(num)) / d if d > 0 else math.nan


def _metric(record: dict, metric: str) -> float:
    if metric not in record["metrics"]:
        raise ValueError(
            f"metric {metric!r} is missing from the cell combo={record['combo']!r} "
            f"seed={record['seed']}; it has {sorted(record['metrics'])}"
        )
    return float(record["metrics"][metric])


def _group(records: list[dict]) -> Cells:
    """(combo, match) -> {seed: record}, base first, base variants next, then the others."""
    cells: Cells = {}
    for r in records:
        by_seed = cells.setdefault((r["combo"], r.get("match")), {})
        if r["seed"] in by_seed:
            warnings.warn(
                f"duplicate cell combo={r['combo']!r} seed={r['seed']} n_train={r['n_train']}"
                f" match={r.get('match')!r}: keeping the first record",
                stacklevel=3,
            )
            continue
        by_seed[r["seed"]] = r
    rank = {key: (key[0] != "base", key[1] is not None, i) for i, key in enumerate(cells)}
    return {key: cells[key] for key in sorted(cells, key=rank.__getitem__)}


def _steps_label(cells: dict[int, dict]) -> str:
    steps = sorted({r["steps"] for r in cells.values()})
    return str(steps[0]) if len(steps) == 1 else f"{steps[0]}–{steps[-1]}"


def _paired_seeds(a: dict[int, dict], b: dict[int, dict]) -> list[int]:
    """Seeds both arms ran, without a diverged cell on either side (excluded pairwise)."""
    return [s for s in sorted(set(a) & set(b)) if not a[s].get("diverged") and not b[s].get("diverged")]


def _pair(a: dict[int, dict], b: dict[int, dict], metric: str, seeds=None, resolution=0.0):
    seeds = _paired_seeds(a, b) if seeds is None else seeds
    if not seeds:
        return None
    return paired_delta([_metric(a[s], metric) for s in seeds],
                        [_metric(b[s], metric) for s in seeds], resolution=resolution)  # fmt: skip


def _interaction_words(stack: str, singles: tuple[str, ...], best: str, d: Delta, p: float) -> str:
    if d.n < 2:
        return f"{stack} vs the better single, {best}: no verdict from one seed"
    if p < ALPHA:
        how = "beats" if d.mean > 0 else "is worse than"
        return f"{stack} {how} the better of {', '.join(singles)} alone ({best})"
    return f"{stack}: no detectable difference from the better single, {best} (n={d.n} seeds)"


def _baselines(cells: Cells, combo: str, by_seed: dict[int, dict], flags: list[str]):
    """(label, cells) of every baseline of ``combo``: base, its step-matched base (data
    atoms) and its time-matched base (``--match time``)."""
    out = [("base", cells[("base", None)])]
    for key in dict.fromkeys(r.get("steps_match") for r in by_seed.values()):
        if key is not None and ("base", key) not in cells:
            flags.append(f"{combo} takes more steps ({key}) but no step-matched base was run")
        elif key is not None:
            matched = cells[("base", key)]
            out.append((f"base (step-matched, {_steps_label(matched)} steps)", matched))
    timed = cells.get(("base", f"time:{combo}"))
    if timed:
        out.append((f"base (time-matched, {_steps_label(timed)} steps)", timed))
    return out


class _Predictions:
    """Test-set correctness per cell, from ``out/preds`` (None when absent)."""

    def __init__(self, out: Path | None, task: str) -> None:
        self.out = out
        path = labels_path(out, task) if out is not None else None
        self.labels = np.load(path) if path is not None and path.exists() else None

    def correct(self, by_seed: dict[int, dict], seeds: list[int]) -> np.ndarray | None:
        if self.labels is None:
            return None
        rows = [read_predictions(self.out, by_seed[s]) for s in seeds]
        if any(r is None or r.shape != self.labels.shape for r in rows):
            return None
        return np.stack([r == self.labels for r in rows])


def _comparisons(cells: Cells, metric: str, flags: list[str], design: Design,
                 preds: _Predictions) -> dict[tuple, list[Comparison]]:  # fmt: skip
    """Every combo vs each of its baselines, decided by the group-sequential design with
    Holm over the table's comparisons."""
    pending = []
    for (combo, match), by_seed in cells.items():
        if combo == "base":
            continue
        for label, other in _baselines(cells, combo, by_seed, flags):
            seeds = _paired_seeds(by_seed, other)
            if len(seeds) < 2:
                flags.append(f"{combo} shares {len(seeds)} usable seed(s) with {label}: no test")
            else:
                pending.append(((combo, match), label, by_seed, other, seeds))
    if not pending:
        return {}
    n_max = max(len(p[-1]) for p in pending)
    looks = design.looks or (n_max,)  # always the full plan: it calibrates each look
    deltas = np.full((len(pending), n_max), np.nan)
    for i, (_, _, a, b, seeds) in enumerate(pending):
        deltas[i, : len(seeds)] = [_metric(a[s], metric) - _metric(b[s], metric) for s in seeds]
    # flat: deltas equal up to float error (less than half a test example apart)
    resolution = 0.5 / preds.labels.size if preds.labels is not None else 1e-4
    dec = decide(deltas, looks, design.margin, design.alpha, resolution, design.rho)
    scale = 100.0 if np.nanmax(np.abs(deltas)) <= 1 else 1.0
    m = len(pending)
    out: dict[tuple, list[Comparison]] = {}
    for i, (key, label, a, b, seeds) in enumerate(pending):
        n = int(dec.n[i]) or len(seeds)
        used = seeds[:n]
        d = _pair(a, b, metric, used, resolution)
        code = int(dec.verdict[i])
        correct_a, correct_b = preds.correct(a, used), preds.correct(b, used)
        multi = flips = None
        if correct_a is not None and correct_b is not None:
            multi = multi_bootstrap(correct_a, correct_b)
            share_a, share_b = correct_a.mean(0), correct_b.mean(0)
            fixes = int(np.sum((share_a > 0.5) & (share_b < 0.5)))
            breaks = int(np.sum((share_a < 0.5) & (share_b > 0.5)))
            flips = (fixes, breaks)
        detectable, needed = math.nan, None
        if code == UNDECIDED and d.std > 0:
            detectable = detectable_effect(d.std, n, design.alpha / m)
            needed = seeds_needed(design.margin, d.std, design.alpha / m)
        out.setdefault(key, []).append(Comparison(
            label, d, code, verdict_words(code, design.margin, n, scale), int(dec.look[i]),
            float(dec.p_diff[i]), float(dec.holm_diff[i]), float(dec.holm_eq[i]),
            p_fresh_seed(deltas[i, :n]), multi, flips, detectable, needed,
        ))  # fmt: skip
    return out


def _interactions(cells: Cells, rows: list[Row], metric: str) -> tuple[Interaction, ...]:
    """Each stack whose atoms all ran alone vs its better single (by mean), Holm over stacks
    (a plain paired t-test on the shared seeds: interactions are reported, not decided)."""
    means = {row.combo: row.summary.mean for row in rows if row.match is None}
    stacks = []
    for combo, match in cells:
        singles = tuple(combo.split("+"))
        if match is None and len(singles) > 1 and all(s in means for s in singles):
            best = max(singles, key=means.__getitem__)
            delta = _pair(cells[(combo, None)], cells[(best, None)], metric)
            if delta is not None:
                stacks.append((combo, singles, best, delta))
    return tuple(
        Interaction(s, singles, best, d, float(p), _interaction_words(s, singles, best, d, p))
        for (s, singles, best, d), p in zip(stacks, holm([d.p for *_, d in stacks]))
    )


def _table(n_train: int | None, records: list[dict], metric: str, design: Design,
           preds: _Predictions) -> Table:  # fmt: skip
    cells = _group(records)
    if ("base", None) not in cells:
        where = "the full pool" if n_train is None else f"n_train={n_train}"
        raise ValueError(
            f"no 'base' cells for {where}: every verdict is against base; add base to --combos"
        )
    base = list(cells[("base", None)].values())
    flags: list[str] = []
    control_cells = cells.pop(("base", CONTROL), None)
    comparisons = _comparisons(cells, metric, flags, design, preds)
    rows = []
    for (combo, match), by_seed in cells.items():
        rs = list(by_seed.values())
        ratios = [_ratio([_cost(r, k) for r in rs], [_cost(r, k) for r in base]) for k in _COST]
        summary = summarize([_metric(r, metric) for r in rs])
        rows.append(Row(combo, match, summary, tuple(comparisons.get((combo, match), ())), *ratios))
    known = [r for r in base if r.get("best_epoch") is not None and r["epochs"]]
    still = sum(r["best_epoch"] == len(r["epochs"]) for r in known)
    if still:
        flags.insert(
            0,
            f"base was still improving at its last epoch in {still} of {len(known)} seeds: "
            "train longer (--epochs)",
        )
    control = None
    if control_cells:
        control = _pair(control_cells, cells[("base", None)], metric)
        if control is not None and control.mean >= design.margin:
            flags.insert(0, (
                f"CONVERGENCE: a base trained 2× the epochs beats the plain base by "
                f"{control.mean * 100 if abs(control.mean) <= 1 else control.mean:+.1f} on "
                f"{control.n} pilot seeds (≥ the margin): base is under-trained, and a gain "
                "against it may only be extra training. Train longer (--epochs) and rerun."
            ))  # fmt: skip
    diverged = tuple(
        f"{base_label(r['match']) if r.get('match') else r['combo']} seed {r['seed']}: "
        f"{r['diverged']}"
        for r in records if r.get("diverged")
    )  # fmt: skip
    return Table(n_train, tuple(rows), _interactions(cells, rows, metric), tuple(flags),
                 diverged, control)  # fmt: skip


def _full_cells(records: list[dict], design: Design) -> int:
    """Cells a fixed design would run: every (combo, base variant) at the largest look."""
    if not design.looks:
        return len(records)
    arms = {(r["combo"], r.get("match"), r["n_train"]) for r in records if r.get("match") != CONTROL}
    controls = {(r["seed"], r["n_train"]) for r in records if r.get("match") == CONTROL}
    return len(arms) * design.looks[-1] + len(controls)


def build_report(
    records: list[dict],
    metric: str = "accuracy",
    design: Design | None = None,
    out: str | os.PathLike | None = None,
) -> Report:
    """Build the report of one task's records (as read by :func:`read_results`).

    Args:
        records: one task's records.
        metric: the record metric the verdicts are about.
        design: the seed design (default: fixed, every seed at once).
        out: the run directory, to read the stored test predictions (per-example figures).

    Raises:
        ValueError: no records, records of more than one task, a table without ``base``
            cells, or a record without ``metric``.

    Example:
        >>> report = build_report(read_results("runs/snownlp/results.jsonl"))
        >>> print(render_markdown(report))
    """
    if not records:
        raise ValueError("no result records: run `danlu lab run ... --out DIR` first")
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if len(tasks) > 1:
        raise ValueError(
            f"the results mix {len(tasks)} tasks {tasks}; a report covers one task: "
            "use one --out directory per task"
        )
    design = design or Design()
    preds = _Predictions(Path(out) if out is not None else None, tasks[0])
    values = [_metric(r, metric) for r in records]
    tables = tuple(
        _table(nt, [r for r in records if r["n_train"] == nt], metric, design, preds)
        for nt in dict.fromkeys(r["n_train"] for r in records)
    )
    return Report(
        task=tasks[0],
        metric=metric,
        seeds=tuple(sorted({r["seed"] for r in records})),
        n_cells=len(records),
        smoke=any(r.get("smoke", False) for r in records),
        scale=100.0 if all(0.0 <= v <= 1.0 for v in values) else 1.0,
        tables=tables,
        design=design,
        full_cells=_full_cells(records, design),
        tested=_tested(records),
    )


def undecided_combos(records: list[dict], design: Design, n_seeds: int) -> dict:
    """``{n_train: {combo, ...}}``: the combos not yet decided on the first ``n_seeds`` seeds
    (a comparison undecided, or too few usable seeds for one): what the next look runs."""
    seen = [r for r in records if r["seed"] < n_seeds]
    report = build_report(seen, design.metric, design)
    return {
        t.n_train: {
            row.combo for row in t.rows if row.match is None and row.combo != "base"
            and (not row.comparisons or any(c.code == UNDECIDED for c in row.comparisons))
        }
        for t in report.tables
    }  # fmt: skip


def _num(x: float, scale: float, sign: bool = False) -> str:
    if math.isnan(x):
        return "–"
    return f"{x * scale:{'+' if sign else ''}.{1 if scale == 100 else 3}f}"


def _p(p: float) -> str:
    return "–" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _p_is(p: float) -> str:
    return "–" if math.isnan(p) else ("< 0.001" if p < 0.001 else f"= {p:.3f}")


def _x(r: float) -> str:
    return "–" if math.isnan(r) else f"{r:.2f}"


def _grid(header: list[str], lines: list[list[str]]) -> list[str]:
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(fmt, lines)]


def _comparison_sentence(row: Row, c: Comparison, s: float, unit: str, design: Design) -> str:
    d = c.delta
    when = f", decided at look {c.look + 1}" if c.look >= 0 and design.looks else ""
    text = (
        f"- **{row.combo}** vs {c.baseline}: **{c.verdict}** (Δ {_num(d.mean, s, True)}{unit}, "
        f"95% CI bootstrap [{_num(d.boot_low, s, True)}, {_num(d.boot_high, s, True)}], "
        f"t [{_num(d.ci_low, s, True)}, {_num(d.ci_high, s, True)}]"
    )
    if c.multi is not None:
        text += f", multi-bootstrap seeds × test examples [{_num(c.multi[1], s, True)}, {_num(c.multi[2], s, True)}]"
    text += (
        f"; p t-test {_p_is(d.p_t)}, sign-flip {_p_is(d.p_sign)}, sequential Holm p "
        f"{_p_is(c.p_holm)} (equivalence {_p_is(c.p_eq_holm)}); n = {d.n} seeds{when}; "
        f"P(beats {c.baseline.split(' (')[0]} on a fresh seed) = {c.p_fresh:.2f}"
    )
    if c.flips is not None:
        text += (f"; it flips {c.flips[0]} test examples to right and {c.flips[1]} to wrong "
                 "(right in most seeds of one arm, wrong in most of the other)")
    text += ")"
    if d.flat:
        text += (
            f". All {d.n} seeds moved by the same Δ: a t-test cannot use a zero spread, and "
            f"the exact sign-flip test's p = {d.p_sign:.3g} is the smallest {d.n} seeds can give "
            "(p < 0.05 needs 6 seeds, more under Holm)"
        )
    if c.code == UNDECIDED and not math.isnan(c.detectable):
        text += (
            f". With these {d.n} seeds (std of Δ {_num(d.std, s)}{unit}) the smallest effect "
            f"detectable at 80% power is ±{_num(c.detectable, s)}{unit}; detecting "
            f"±{_num(design.margin, s)}{unit} needs about {c.needed} seeds"
        )
    return text


def _table_markdown(table: Table, report: Report) -> list[str]:
    s, unit = report.scale, " points" if report.scale == 100 else ""
    size = "full training pool" if table.n_train is None else f"n_train = {table.n_train}"
    header = ["combo", "n", f"{report.metric} mean ± std", "Δ vs baseline [95% CI]",
              "p t / sign-flip", "seq. Holm p", "verdict", "P(fresh)", "time ×", "mem ×",
              "steps ×"]  # fmt: skip
    lines, sentences = [], []
    for row in table.rows:
        sm = row.summary
        first = [row.label, str(sm.n), f"{_num(sm.mean, s)} ± {_num(sm.std, s)}"]
        cost = [_x(row.time_ratio), _x(row.mem_ratio), _x(row.steps_ratio)]
        if not row.comparisons:
            lines.append([*first, "", "", "", "", "", *cost])
        for i, c in enumerate(row.comparisons):
            d = c.delta
            cells = [
                f"{_num(d.mean, s, True)} [{_num(d.boot_low, s, True)}, {_num(d.boot_high, s, True)}]",
                f"{_p(d.p_t)} / {_p(d.p_sign)}", _p(c.p_holm), c.verdict, f"{c.p_fresh:.2f}",
            ]  # fmt: skip
            lead = first if i == 0 else [f"  ↳ vs {c.baseline}", str(d.n), ""]
            lines.append([*lead, *cells, *(cost if i == 0 else ["", "", ""])])
            sentences.append(_comparison_sentence(row, c, s, unit, report.design))
    out = [f"## {report.task}, {size}", "", *_grid(header, lines), ""]
    m = sum(len(r.comparisons) for r in table.rows)
    decided = sum(c.code != UNDECIDED for r in table.rows for c in r.comparisons)
    out += [f"Verdicts ({decided} of {m} comparisons decided; Holm over the {m} comparisons "
            "of this table, separately for helps/hurts and for equivalent):", "", *sentences, ""]  # fmt: skip
    if table.control is not None:
        d = table.control
        out += [f"Convergence control: base with 2× the epochs vs base, Δ {_num(d.mean, s, True)}"
                f"{unit} [{_num(d.ci_low, s, True)}, {_num(d.ci_high, s, True)}] on {d.n} pilot "
                "seeds (a check of the baseline, not a verdict).", ""]  # fmt: skip
    if table.diverged:
        out += [f"Diverged runs (rule fixed before the run: {RULE}); each is left out of the "
                "comparisons it is part of, pairwise:", "",
                *[f"- {line}" for line in table.diverged], ""]  # fmt: skip
    if table.interactions:
        out += [
            "Interactions (each stack against its better single atom, Holm over the stacks):",
            "",
        ]
        for it in table.interactions:
            d = it.delta
            out.append(
                f"- {it.words}: Δ {_num(d.mean, s, True)} [{_num(d.boot_low, s, True)}, "
                f"{_num(d.boot_high, s, True)}], p {_p_is(d.p)}, Holm p {_p_is(it.p_holm)}"
            )
        out.append("")
    out += [f"> ⚠ {flag}" for flag in table.flags] + ([""] if table.flags else [])
    return out


HOW_TO_READ = (
    "**How to read a verdict.** Each cell is one fine-tune with one seed, scored once on the "
    "test split (the model at the end of training, or the best dev epoch's: the line under "
    "the title says which); the same seed gives every combo the same split, "
    "initialisation and data order, so each combo is compared with its baseline *paired by "
    "seed*. A verdict is one of four: **helps** / **hurts** (the paired t-test rejects 'no "
    "effect'), **equivalent within ±m** (the paired equivalence test, TOST, rejects 'the "
    "effect is at least the margin m'), or **undecided at n seeds** (neither; the line then "
    "says the smallest effect those seeds could detect and how many seeds ±m would need). "
    "With `--seeds auto` the seeds come in planned looks and only undecided combos (and their "
    "baselines) get more; each p-value is corrected for the looks (sequential p) and then by "
    "Holm over the table, so the chance of any false helps/hurts in a table stays at 5%, and "
    "the same for a false 'equivalent'. Each line names its baseline: base, the base given "
    "the same optimizer steps (augmentation), or the base given the same training time "
    "(`--match time`). The sign-flip p needs no normality and shows what n seeds can show "
    "(at best 2/2ⁿ); the multi-bootstrap interval resamples seeds and test examples, so it is "
    "about the recipe, not this test set; P(fresh) is the chance that one new seed of the "
    "combo beats the baseline. time ×, mem × and steps × are ratios of means against base."
)


def render_markdown(report: Report) -> str:
    """The report as markdown: title, design, one table per n_train with verdict sentences,
    the convergence control, diverged runs, interaction lines and flags, and a "how to read
    this" paragraph. Deterministic."""
    seeds = ", ".join(map(str, report.seeds))
    unit = " (in points, ×100)" if report.scale == 100 else ""
    dz = report.design
    out = [
        f"# danlu lab: {report.task}",
        "",
        f"Metric: test {report.metric}{unit}, {report.tested}. "
        f"{len(report.seeds)} seed{'s' * (len(report.seeds) > 1)} ({seeds}), "
        f"{report.n_cells} cells.",
        "",
    ]
    if dz.looks and dz.adaptive:
        saved = report.full_cells - report.n_cells
        out += [
            f"Design: adaptive seeds, planned looks at {', '.join(map(str, dz.looks))} seeds "
            f"(group-sequential, rho = {dz.rho:g}); equivalence margin ±"
            f"{_num(dz.margin, report.scale)}; α = {dz.alpha:g} per table. Cells run: "
            f"{report.n_cells}; every combo at {dz.looks[-1]} seeds would take "
            f"{report.full_cells}: the adaptive design saved {saved} cells "
            f"({saved / max(1, report.full_cells):.0%}).",
            "",
        ]
    if report.smoke:
        out += [
            "**Smoke run** (tiny model, few steps): these numbers test the pipeline, not "
            "the tricks.",
            "",
        ]
    for table in report.tables:
        out += _table_markdown(table, report)
    return "\n".join([*out, HOW_TO_READ, ""])


def _figure(n_panels: int, height: float) -> tuple:
    """A matplotlib Figure (no pyplot, so no global backend state) and its column of axes."""
    figure = require("matplotlib.figure", "lab", "the lab plots").Figure
    fig = figure(figsize=(9, max(2.5, height)), layout="constrained")
    return fig, fig.subplots(n_panels, 1, squeeze=False)[:, 0]


def _unit(report: Report) -> str:
    return " (points)" if report.scale == 100 else ""


def _title(table: Table) -> str:
    return "full training pool" if table.n_train is None else f"n_train = {table.n_train}"


def _err(d: Delta, low: float, high: float, scale: float) -> list[list[float]] | None:
    """Asymmetric error-bar lengths of the interval [low, high] around d.mean (None: n < 2)."""
    if d.n < 2:
        return None
    return [[max(0.0, (d.mean - low) * scale)], [max(0.0, (high - d.mean) * scale)]]


def plot_deltas(report: Report, path: str | os.PathLike) -> None:
    """Paired deltas per comparison, one panel per n_train, zero line: thick bars are the 95%
    bootstrap CI of the table, thin bars the 95% t CI (wider, and more honest, at few seeds)."""
    colors = {HELPS: "tab:green", HURTS: "tab:red", EQUIVALENT: "tab:blue"}
    n = sum(max(1, sum(len(r.comparisons) for r in t.rows)) for t in report.tables)
    fig, axes = _figure(len(report.tables), 0.9 + 0.4 * n)
    for ax, table in zip(axes, report.tables):
        items = [(row, c) for row in table.rows for c in row.comparisons]
        for y, (_, c) in enumerate(reversed(items)):
            d, s, color = c.delta, report.scale, colors.get(c.code, "tab:gray")
            x = d.mean * s
            ax.errorbar(
                x,
                y,
                xerr=_err(d, d.ci_low, d.ci_high, s),
                fmt="none",
                color=color,
                linewidth=0.8,
                capsize=3,
            )
            ax.errorbar(
                x, y, xerr=_err(d, d.boot_low, d.boot_high, s), fmt="o", color=color, linewidth=3
            )
        ax.set_yticks(range(len(items)))
        ax.set_yticklabels([f"{r.combo} vs {c.baseline}" for r, c in reversed(items)])
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_title(f"{report.task}, {_title(table)}: paired Δ (green helps, red hurts, "
                     "blue equivalent)")
        ax.set_xlabel(f"Δ {report.metric}{_unit(report)}; 95% CI: thick bootstrap, thin t")
    fig.savefig(path, dpi=100)


def plot_cost(report: Report, path: str | os.PathLike) -> None:
    """Delta vs base (95% t CI bars) against the wall-time ratio, one labelled point per combo."""
    fig, axes = _figure(len(report.tables), 3.5 * len(report.tables))
    for ax, table in zip(axes, report.tables):
        for row in table.rows:
            vs_base = [c for c in row.comparisons if c.baseline == "base"]
            if vs_base and not math.isnan(row.time_ratio):
                d, s = vs_base[0].delta, report.scale
                err = _err(d, d.ci_low, d.ci_high, s)
                ax.errorbar(row.time_ratio, d.mean * s, yerr=err, fmt="o", capsize=3)
                ax.annotate(
                    row.combo,
                    (row.time_ratio, d.mean * s),
                    textcoords="offset points",
                    xytext=(5, 5),
                )
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axvline(1.0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_title(f"{report.task}, {_title(table)}: gain vs cost")
        ax.set_xlabel("training time × base")
        ax.set_ylabel(f"Δ {report.metric} vs base{_unit(report)}, 95% t CI")
        ax.margins(x=0.2, y=0.15)
    fig.savefig(path, dpi=100)


def write_report(out_dir: str | os.PathLike, metric: str | None = None) -> str:
    """Read ``out_dir/results.jsonl`` (and its design and stored predictions); write
    ``report.md``, ``deltas.png`` and ``cost.png`` there; return the markdown.

    Example:
        >>> print(write_report("runs/snownlp"))
    """
    out = Path(out_dir)
    records = read_results(out / "results.jsonl")
    if not records:
        raise ValueError(
            f"{out / 'results.jsonl'} is missing or empty: run `danlu lab run ... --out {out}` first"
        )
    design = read_design(out)
    report = build_report(records, metric or design.metric, design, out)
    markdown = render_markdown(report) + "\n![paired deltas](deltas.png)\n\n![cost](cost.png)\n"
    plot_deltas(report, out / "deltas.png")
    plot_cost(report, out / "cost.png")
    (out / "report.md").write_text(markdown, encoding="utf-8")
    return markdown
