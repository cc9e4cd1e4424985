"""The lab report: from the records of ``results.jsonl`` to tables with paired deltas,
Holm-corrected verdicts, interaction lines and flags (:func:`build_report`), rendered as
markdown (:func:`render_markdown`) and two PNG plots (:func:`plot_deltas`, :func:`plot_cost`).

:func:`write_report` does all of it for one output directory. matplotlib and scipy (extra
``lab``) are imported only when a report is built or drawn.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from danlu._optional import require
from danlu.lab.results import read_results
from danlu.lab.stats import Delta, Summary, holm, paired_delta, summarize, verdict

__all__ = [
    "Comparison",
    "Row",
    "Interaction",
    "Table",
    "Report",
    "build_report",
    "render_markdown",
    "plot_deltas",
    "plot_cost",
    "write_report",
]

ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """A combo's paired delta against one baseline (``"base"`` or the step-matched base)."""

    baseline: str
    delta: Delta
    p_holm: float
    verdict: str


@dataclass(frozen=True)
class Row:
    """One combo of a table; ``match`` is set for a step-matched base row."""

    combo: str
    match: str | None
    summary: Summary
    comparisons: tuple[Comparison, ...]
    time_ratio: float
    mem_ratio: float
    steps_ratio: float

    @property
    def label(self) -> str:
        return f"base (step-matched to {self.match})" if self.match else self.combo


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


_COST = ("wall_s", "peak_mem_mb", "steps")  # the ratio columns, in Row order
Cells = dict[tuple[str, str | None], dict[int, dict]]  # (combo, match) -> {seed: record}


def _cost(record: dict, key: str) -> float:
    """A cost figure; time is the training time (augmentation + optimizer steps) when the
    record has it, else the cell's wall time."""
    if key == "wall_s" and "train_s" in record:
        return float(record["train_s"])
    return float(record[key])


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
    """(combo, match) -> {seed: record}, base first, step-matched bases next, then others."""
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


def _pair(a: dict[int, dict], b: dict[int, dict], metric: str) -> Delta | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    return paired_delta(
        [_metric(a[s], metric) for s in seeds], [_metric(b[s], metric) for s in seeds]
    )


def _interaction_words(stack: str, singles: tuple[str, ...], best: str, d: Delta, p: float) -> str:
    if d.n < 2:
        return f"{stack} vs the better single, {best}: no verdict from one seed"
    if p < ALPHA:
        how = "beats" if d.mean > 0 else "is worse than"
        return f"{stack} {how} the better of {', '.join(singles)} alone ({best})"
    return f"{stack}: no detectable difference from the better single, {best} (n={d.n} seeds)"


def _comparisons(cells: Cells, metric: str, flags: list[str]) -> dict[tuple, list[Comparison]]:
    """Every combo vs base and vs its step-matched base, Holm-adjusted as one family."""
    pending: list[tuple[tuple[str, str | None], str, Delta]] = []
    for (combo, match), by_seed in cells.items():
        if combo == "base":
            continue
        baselines = [("base", cells[("base", None)])]
        for key in dict.fromkeys(r.get("steps_match") for r in by_seed.values()):
            if key is not None and ("base", key) not in cells:
                flags.append(f"{combo} takes more steps ({key}) but no step-matched base was run")
            elif key is not None:
                matched = cells[("base", key)]
                baselines.append((f"base (step-matched, {_steps_label(matched)} steps)", matched))
        for label, other in baselines:
            delta = _pair(by_seed, other, metric)
            if delta is None:
                flags.append(f"{combo} shares no seed with {label}: no paired comparison")
            else:
                pending.append(((combo, match), label, delta))
    out: dict[tuple, list[Comparison]] = {}
    for (key, label, d), p in zip(pending, holm([d.p for *_, d in pending])):
        out.setdefault(key, []).append(Comparison(label, d, p, verdict(d.mean, p, d.n)))
    return out


def _interactions(cells: Cells, rows: list[Row], metric: str) -> tuple[Interaction, ...]:
    """Each stack whose atoms all ran alone vs its better single (by mean), Holm over stacks."""
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
        Interaction(s, singles, best, d, p, _interaction_words(s, singles, best, d, p))
        for (s, singles, best, d), p in zip(stacks, holm([d.p for *_, d in stacks]))
    )


def _table(n_train: int | None, records: list[dict], metric: str) -> Table:
    cells = _group(records)
    if ("base", None) not in cells:
        where = "the full pool" if n_train is None else f"n_train={n_train}"
        raise ValueError(
            f"no 'base' cells for {where}: every verdict is against base; add base to --combos"
        )
    base = list(cells[("base", None)].values())
    flags: list[str] = []
    comparisons = _comparisons(cells, metric, flags)
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
    return Table(n_train, tuple(rows), _interactions(cells, rows, metric), tuple(flags))


def build_report(records: list[dict], metric: str = "accuracy") -> Report:
    """Build the report of one task's records (as read by :func:`read_results`).

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
    values = [_metric(r, metric) for r in records]
    tables = tuple(
        _table(nt, [r for r in records if r["n_train"] == nt], metric)
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
    )


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


def _table_markdown(table: Table, report: Report) -> list[str]:
    s, unit = report.scale, " points" if report.scale == 100 else ""
    size = "full training pool" if table.n_train is None else f"n_train = {table.n_train}"
    header = [
        "combo",
        "n",
        f"{report.metric} mean ± std",
        "95% CI",
        "Δ vs base [95% CI]",
        "p (Holm)",
        "verdict",
        "time ×",
        "mem ×",
        "steps ×",
    ]
    lines, sentences = [], []
    for row in table.rows:
        sm = row.summary
        first = [
            row.label,
            str(sm.n),
            f"{_num(sm.mean, s)} ± {_num(sm.std, s)}",
            f"[{_num(sm.ci_low, s)}, {_num(sm.ci_high, s)}]",
        ]
        cost = [_x(row.time_ratio), _x(row.mem_ratio), _x(row.steps_ratio)]
        if not row.comparisons:
            lines.append([*first, "", "", "", *cost])
        for i, c in enumerate(row.comparisons):
            d = c.delta
            cells = [
                f"{_num(d.mean, s, True)} [{_num(d.boot_low, s, True)}, {_num(d.boot_high, s, True)}]",
                f"{_p(d.p)} ({_p(c.p_holm)})",
                c.verdict,
            ]
            lead = first if i == 0 else [f"  ↳ vs {c.baseline}", str(d.n), "", ""]
            lines.append([*lead, *cells, *(cost if i == 0 else ["", "", ""])])
            sentences.append(
                f"- **{row.combo}** vs {c.baseline}: {c.verdict} (Δ {_num(d.mean, s, True)}"
                f"{unit}, 95% CI bootstrap [{_num(d.boot_low, s, True)}, "
                f"{_num(d.boot_high, s, True)}], t [{_num(d.ci_low, s, True)}, "
                f"{_num(d.ci_high, s, True)}], p {_p_is(d.p)}, Holm p {_p_is(c.p_holm)}, "
                f"n = {d.n} seeds)"
            )
    out = [f"## {report.task}, {size}", "", *_grid(header, lines), ""]
    m = sum(not math.isnan(c.delta.p) for r in table.rows for c in r.comparisons)
    out += [f"Verdicts (Holm over the {m} comparisons of this table):", "", *sentences, ""]
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
    "**How to read this.** Each cell is one fine-tune with one seed; the model is selected on "
    "a dev split and scored once on the test split. The same seed gives every combo the same "
    "data split and order, so each combo is compared with base *paired by seed*: Δ is the mean "
    "of the per-seed differences. The table gives its 95% bootstrap CI over seeds; the verdict "
    "lines add the t interval (with few seeds the bootstrap interval is too narrow: trust the "
    "wider one). p is a paired t-test; Holm's correction (in parentheses) keeps the chance of "
    'any false "helps"/"hurts" in a table at 5%. A verdict needs Holm p < 0.05; otherwise any '
    "effect cannot be told apart from the seed-to-seed noise at this many seeds (more seeds "
    "resolve smaller effects). Combos that take more optimizer steps than base are also "
    "compared with a base trained for the same number of steps: a gain that disappears there "
    "came from the extra steps, not the trick. time ×, mem × and steps × are ratios of means "
    "against base (time: training time, i.e. augmentation and optimizer steps, without the "
    "evaluations; mem: the cell's peak memory growth)."
)


def render_markdown(report: Report) -> str:
    """The report as markdown: title, one table per n_train with verdict sentences,
    interaction lines and flags, and a "how to read this" paragraph. Deterministic."""
    seeds = ", ".join(map(str, report.seeds))
    unit = " (in points, ×100)" if report.scale == 100 else ""
    out = [
        f"# danlu lab: {report.task}",
        "",
        f"Metric: test {report.metric}{unit}, model selected on dev. "
        f"{len(report.seeds)} seed{'s' * (len(report.seeds) > 1)} ({seeds}), "
        f"{report.n_cells} cells.",
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
    colors = {"helps": "tab:green", "hurts": "tab:red"}
    n = sum(max(1, sum(len(r.comparisons) for r in t.rows)) for t in report.tables)
    fig, axes = _figure(len(report.tables), 0.9 + 0.4 * n)
    for ax, table in zip(axes, report.tables):
        items = [(row, c) for row in table.rows for c in row.comparisons]
        for y, (_, c) in enumerate(reversed(items)):
            d, s, color = c.delta, report.scale, colors.get(c.verdict, "tab:gray")
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
        ax.set_title(f"{report.task}, {_title(table)}: paired Δ (green helps, red hurts)")
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


def write_report(out_dir: str | os.PathLike, metric: str = "accuracy") -> str:
    """Read ``out_dir/results.jsonl``; write ``report.md``, ``deltas.png`` and ``cost.png``
    there; return the markdown.

    Example:
        >>> print(write_report("runs/snownlp"))
    """
    out = Path(out_dir)
    records = read_results(out / "results.jsonl")
    if not records:
        raise ValueError(
            f"{out / 'results.jsonl'} is missing or empty: run `danlu lab run ... --out {out}` first"
        )
    report = build_report(records, metric)
    markdown = render_markdown(report) + "\n![paired deltas](deltas.png)\n\n![cost](cost.png)\n"
    plot_deltas(report, out / "deltas.png")
    plot_cost(report, out / "cost.png")
    (out / "report.md").write_text(markdown, encoding="utf-8")
    return markdown
