"""Optional MLflow tracking of a lab run (extra ``mlflow``): one parent run per output
directory (the task's settings and design as params, ``report.md`` and the plots as
artefacts, kept in ``out/mlartifacts`` for a local store) with one nested run per cell (its key as params, its metrics and costs).
``results.jsonl`` stays the source of truth: logging reads it, and a cell already logged
(tag ``danlu.cell``) is not logged twice, so a resumed run logs only its new cells.

Example:
    >>> log_to_mlflow("runs/demo")  # doctest: +SKIP
    'sqlite:///runs/demo/mlflow.db'
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from danlu._optional import require
from danlu.lab.results import cell_key, read_results

__all__ = ["log_to_mlflow"]


def log_to_mlflow(out: str | os.PathLike, uri: str | None = None) -> str:
    """Log the cells and the report of ``out`` to the MLflow store at ``uri`` (default: a
    local sqlite store ``out/mlflow.db``); returns the URI. The experiment is
    ``danlu-lab-<task>``; the parent run is named after ``out``."""
    mlflow = require("mlflow", "mlflow", "--mlflow")
    out = Path(out)
    records = read_results(out / "results.jsonl")
    if not records:
        raise ValueError(f"{out}/results.jsonl is empty: nothing to log")
    uri = uri or f"sqlite:///{out.resolve()}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    name = f"danlu-lab-{records[0]['task']}"
    if mlflow.get_experiment_by_name(name) is None:
        # a database store keeps artefacts in ./mlruns of the working directory unless told:
        # keep them beside the run (a tracking server with its own artefact store ignores it)
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        mlflow.create_experiment(name, (out.resolve() / "mlartifacts").as_uri() if local else None)
    experiment = mlflow.set_experiment(name)
    parent_name = str(out.resolve())
    found = mlflow.search_runs([experiment.experiment_id], output_format="list",
                               filter_string=f"tags.`danlu.out` = '{parent_name}'")  # fmt: skip
    with mlflow.start_run(run_id=found[0].info.run_id if found else None,
                          run_name=out.name, tags={"danlu.out": parent_name}) as parent:  # fmt: skip
        logged = {r.data.tags.get("danlu.cell") for r in mlflow.search_runs(
            [experiment.experiment_id], output_format="list",
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}  # fmt: skip
        if not found:
            for name in ("lab.json", "design.json"):
                if (out / name).exists():
                    settings = json.loads((out / name).read_text(encoding="utf-8"))
                    mlflow.log_params({f"{name[:-5]}.{k}": str(v)[:250] for k, v in settings.items()})
        for r in records:
            key = "|".join(map(str, cell_key(r)))
            if key in logged:
                continue
            with mlflow.start_run(run_name=f"{r['combo']} s{r['seed']}", nested=True,
                                  tags={"danlu.cell": key}):  # fmt: skip
                mlflow.log_params({"combo": r["combo"], "seed": r["seed"], "n_train": r["n_train"],
                                   "match": r.get("match")})  # fmt: skip
                costs = {k: r[k] for k in ("wall_s", "train_s", "eval_s", "peak_mem_mb", "steps") if k in r}
                mlflow.log_metrics({**r["metrics"], **costs,
                                    "diverged": float(bool(r.get("diverged")))})  # fmt: skip
        for name in ("report.md", "deltas.png", "cost.png", "results.jsonl"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name))
    return uri
