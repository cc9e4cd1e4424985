"""``seeds="auto"``: the runner's planned looks, resume in the middle of a look, the
convergence control and the time-matched base, on synthetic cells (a fake ``run_cell`` with
known effects, so the decisions are known and nothing trains); plus MLflow logging against
a real local store and the multi-task aggregate."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import toy_lab_task

from danlu.lab import runner
from danlu.lab.cell import CONTROL
from danlu.lab.report import build_report, read_design, write_report
from danlu.lab.results import cell_key, read_predictions, read_results
from danlu.lab.runner import run_lab

EFFECT = {"base": 0.0, "fgm": 0.12, "ema": 0.0}  # fgm: +12 points; ema: a noisy no-effect
NOISE = {"base": 0.01, "fgm": 0.02, "ema": 0.08}
TIME = {"base": 1.0, "fgm": 2.0, "ema": 1.05}


def fake_cell(task, cell, atoms=None):
    """A record with the test predictions of accuracy ~ 0.7 + the combo's effect + seeded
    noise (so accuracy is a multiple of 1/60, as on the toy's 60 test examples)."""
    labels = np.asarray(task.load()[1].labels)
    rng = np.random.default_rng([cell.seed, len(cell.combo), len(cell.match or "")])
    acc = 0.7 + EFFECT[cell.combo] + NOISE[cell.combo] * rng.standard_normal()
    if cell.match == CONTROL:
        acc += 0.05  # base trained 2x longer is better: the convergence flag must fire
    right = np.zeros(labels.size, dtype=bool)
    right[rng.permutation(labels.size)[: round(min(1.0, acc) * labels.size)]] = True
    pred = np.where(right, labels, 1 - labels)
    steps = cell.steps or 10
    acc = float(right.mean())
    return {
        "task": cell.task, "combo": cell.combo, "seed": cell.seed, "n_train": cell.n_train,
        "match": cell.match, "steps_match": cell.steps_match,
        "metrics": {"accuracy": acc, "macro_f1": acc},
        "dev": {"accuracy": acc}, "best_epoch": 1,
        "epochs": [{"epoch": 1, "steps": steps, "train_loss": 0.5}], "steps": steps,
        "wall_s": 1.0, "train_s": TIME[cell.combo] * steps / 10, "peak_mem_mb": 1.0,
        "diverged": None, "test_pred": pred.tolist(),
    }  # fmt: skip


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(runner, "run_cell", fake_cell)


def _auto(out, **kw):
    return run_lab(toy_lab_task(), ["base", "fgm", "ema"], seeds="auto", n_train=40, out=out,
                   workers=0, progress=False, **kw)  # fmt: skip


def test_only_undecided_combos_and_their_base_get_more_seeds(fake, tmp_path):
    records = _auto(tmp_path)
    seeds = {}
    for r in records:
        seeds.setdefault((r["combo"], r["match"]), set()).add(r["seed"])
    looks = read_design(tmp_path).looks
    assert looks == (3, 4, 5, 6, 8, 10)
    assert seeds[("base", CONTROL)] == {0, 1, 2}  # the convergence control: pilot seeds only
    report = build_report(records, design=read_design(tmp_path), out=tmp_path)
    rows = {r.combo: r for r in report.tables[0].rows if r.match is None}
    fgm, ema = rows["fgm"].comparisons[0], rows["ema"].comparisons[0]
    assert fgm.verdict == "helps" and seeds[("fgm", None)] == set(range(fgm.delta.n))
    assert fgm.delta.n < 10 and ema.delta.n == 10 == len(seeds[("base", None)])
    md = write_report(tmp_path)
    assert f"every combo at 10 seeds would take {3 * 10 + 3}" in md
    assert f"saved {33 - len(records)} cells" in md and "CONVERGENCE" in md
    assert read_predictions(tmp_path, records[0]).shape == (60,)


class Interrupted(Exception):
    pass


def test_resume_in_the_middle_of_a_look_gives_the_uninterrupted_run(fake, tmp_path):
    whole = {cell_key(r) for r in _auto(tmp_path / "whole")}
    seen = []

    def stop(record):
        seen.append(record)
        if record["seed"] == 4:  # inside the third look (seeds 4 and 5)
            raise Interrupted

    with pytest.raises(Interrupted):
        _auto(tmp_path / "cut", on_record=stop)
    assert len(read_results(tmp_path / "cut" / "results.jsonl")) == len(seen) < len(whole)
    again = []
    resumed = _auto(tmp_path / "cut", on_record=again.append)
    assert {cell_key(r) for r in resumed} == whole
    assert not {cell_key(r) for r in again} & {cell_key(r) for r in seen}  # nothing twice


def test_time_matched_base_gets_the_costly_combos_training_time(fake, tmp_path):
    records = _auto(tmp_path, match_time=True)
    timed = [r for r in records if r["match"] == "time:fgm"]
    assert timed and all(r["steps"] == 20 for r in timed)  # fgm costs 2x base's time
    assert not [r for r in records if r["match"] == "time:ema"]  # 1.05x: not costly
    assert read_design(tmp_path).time_steps["40:fgm"] == 20
    report = build_report(records, design=read_design(tmp_path), out=tmp_path)
    (fgm,) = [r for r in report.tables[0].rows if r.combo == "fgm"]
    assert [c.baseline for c in fgm.comparisons] == ["base", "base (time-matched, 20 steps)"]
    # fgm had more seeds while any of its comparisons was undecided; each uses its own look
    assert {r["seed"] for r in timed} == {r["seed"] for r in records if r["combo"] == "fgm"}
    assert fgm.comparisons[1].verdict == "helps" and fgm.comparisons[1].delta.n <= len(timed)


def test_adaptive_bad_input(tmp_path):
    task = toy_lab_task()
    with pytest.raises(ValueError, match=r"min_seeds \(5\) must be <= max_seeds \(3\)"):
        run_lab(task, ["base", "fgm"], seeds="auto", min_seeds=5, max_seeds=3, out=tmp_path)
    with pytest.raises(ValueError, match="margin must be > 0"):
        run_lab(task, ["base", "fgm"], seeds="auto", margin=0.0, out=tmp_path)
    with pytest.raises(ValueError, match="add 'base'"):
        run_lab(task, ["fgm"], seeds="auto", out=tmp_path)
    with pytest.raises(ValueError, match="'auto'"):
        run_lab(task, ["base"], seeds="many", out=tmp_path)


def test_mlflow_logs_every_cell_once_to_a_real_local_store(fake, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from danlu.lab.tracking import log_to_mlflow

    records = run_lab(toy_lab_task(), ["base", "fgm"], seeds=2, n_train=40, out=tmp_path,
                      workers=0, progress=False)  # fmt: skip
    write_report(tmp_path)
    uri = log_to_mlflow(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    log_to_mlflow(tmp_path)  # a second call (a resumed run) logs nothing twice
    client = mlflow.MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "danlu-lab-toy"]
    runs = client.search_runs([exp.experiment_id])
    cells = [r for r in runs if "danlu.cell" in r.data.tags]
    assert len(cells) == len(records) == 4 and len(runs) == 5
    by_key = {r.data.tags["danlu.cell"]: r for r in cells}
    for rec in records:
        logged = by_key["|".join(map(str, cell_key(rec)))]
        assert logged.data.metrics["accuracy"] == pytest.approx(rec["metrics"]["accuracy"])
        assert logged.data.params["combo"] == rec["combo"]
    (parent,) = [r for r in runs if "danlu.cell" not in r.data.tags]
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.md", "deltas.png", "results.jsonl"} <= names
    stored = list((tmp_path / "mlartifacts").rglob("report.md"))  # beside the run, not ./mlruns
    assert len(stored) == 1 and stored[0].read_text() == (tmp_path / "report.md").read_text()


def test_aggregate_across_tasks_against_a_plain_computation(fake, tmp_path):
    from danlu.lab.aggregate import aggregate

    per_task = {}
    for name in ("a", "b"):
        per_task[name] = run_lab(toy_lab_task(name), ["base", "fgm"], seeds=3, n_train=40,
                                 out=tmp_path / name, workers=0, progress=False)  # fmt: skip
    (agg,) = aggregate(per_task, n_boot=200)
    expected_red, expected_imp = [], []
    for records in per_task.values():
        acc = {(r["combo"], r["seed"]): r["metrics"]["accuracy"] for r in records}
        a = np.array([acc[("fgm", s)] for s in range(3)])
        b = np.array([acc[("base", s)] for s in range(3)])
        expected_red.append(np.mean(a - b) / (1 - b.mean()))
        expected_imp.append(np.mean([[x > y for y in b] for x in a]))
    assert agg.error_reduction == pytest.approx(np.mean(expected_red))
    assert agg.p_improve == pytest.approx(np.mean(expected_imp))
    assert agg.low <= agg.error_reduction <= agg.high and agg.tasks == ("a", "b")
    with pytest.raises(ValueError, match="at least 2 tasks"):
        aggregate({"a": per_task["a"]})
