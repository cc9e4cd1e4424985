"""The lab runner: results.jsonl, resume after an interruption, a changed grid, refusing to
mix tasks, and the process / Ray executors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import toy_lab_task

from danlu.lab.results import cell_key, read_results
from danlu.lab.runner import plan_cells, run_lab

GRID = dict(combos=["base", "ema"], seeds=2, n_train=40)


class Interrupted(Exception):
    pass


def _stop_after(k: int, seen: list):
    def on_record(record):
        seen.append(cell_key(record))
        if len(seen) == k:
            raise Interrupted

    return on_record


def test_interrupted_run_resumes_with_exactly_the_missing_cells(tmp_path):
    task, first, second = toy_lab_task(epochs=1), [], []
    with pytest.raises(Interrupted):
        run_lab(task, **GRID, out=tmp_path, workers=0, progress=False, on_record=_stop_after(3, first))
    assert [cell_key(r) for r in read_results(tmp_path / "results.jsonl")] == first
    records = run_lab(task, **GRID, out=tmp_path, workers=0, progress=False, on_record=second.append)
    planned = {c.key() for c in plan_cells("toy", ["base", "ema"], [0, 1], [40])}
    assert {cell_key(r) for r in second} == planned - set(first)
    assert sorted(cell_key(r) for r in records) == sorted(planned)  # each cell exactly once
    again = []
    run_lab(task, **GRID, out=tmp_path, workers=0, progress=False, on_record=again.append)
    assert again == []  # nothing left to run


def test_half_written_last_line_is_ignored_and_its_cell_rerun(tmp_path):
    task = toy_lab_task(epochs=1)
    grid = dict(combos=["base"], seeds=2, n_train=40)
    run_lab(task, **grid, out=tmp_path, workers=0, progress=False)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][: len(lines[1]) // 2])  # killed while writing line 2
    rerun = []
    with pytest.warns(UserWarning, match="half-written"):
        records = run_lab(task, **grid, out=tmp_path, workers=0, progress=False, on_record=rerun.append)
    assert [r["seed"] for r in rerun] == [json.loads(lines[1])["seed"]]
    assert sorted(r["seed"] for r in records) == [0, 1]


def test_a_grown_grid_runs_only_its_new_cells(tmp_path):
    task, new = toy_lab_task(epochs=1), []
    run_lab(task, ["base"], seeds=1, n_train=40, out=tmp_path, workers=0, progress=False)
    run_lab(task, ["base", "fgm"], seeds=2, n_train=40, out=tmp_path, workers=0, progress=False,
            on_record=new.append)  # fmt: skip
    assert sorted((r["combo"], r["seed"]) for r in new) == [("base", 1), ("fgm", 0), ("fgm", 1)]


def test_output_dir_of_another_task_or_setup_is_refused(tmp_path):
    task = toy_lab_task(epochs=1)
    run_lab(task, ["base"], seeds=1, n_train=40, out=tmp_path, workers=0, progress=False)
    with pytest.raises(ValueError, match="another setup"):
        run_lab(toy_lab_task("other", epochs=1), ["base"], seeds=1, out=tmp_path, workers=0)
    with pytest.raises(ValueError, match="another setup.*epochs"):
        run_lab(dataclasses.replace(task, epochs=2), ["base"], seeds=1, out=tmp_path, workers=0)
    (tmp_path / "lab.json").unlink()  # results alone still name their task
    with pytest.raises(ValueError, match=r"task\(s\) \['toy'\], not 'other'"):
        run_lab(toy_lab_task("other", epochs=1), ["base"], seeds=1, out=tmp_path, workers=0)


def test_bad_arguments_are_refused(tmp_path):
    task = toy_lab_task()
    with pytest.raises(ValueError, match="workers must be"):
        run_lab(task, ["base"], out=tmp_path, workers=-1)
    with pytest.raises(ValueError, match="threads must be"):
        run_lab(task, ["base"], out=tmp_path, threads=0)
    with pytest.raises(ValueError, match="executor must be"):
        run_lab(task, ["base"], out=tmp_path, executor="slurm")
    with pytest.raises(ValueError, match="unknown trick 'fmg'"):
        run_lab(task, ["base", "fmg"], out=tmp_path)
    with pytest.raises(TypeError, match="split it"):
        run_lab(task, "base,fgm", out=tmp_path)


def _inline_records(tmp_path, combos):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers (threads=1): bitwise equal results
    try:
        run_lab(toy_lab_task(epochs=1), combos, seeds=1, n_train=40, out=tmp_path / "inline",
                workers=0, progress=False)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return {cell_key(r): r for r in read_results(tmp_path / "inline" / "results.jsonl")}


def _same_training(a: dict, b: dict) -> None:
    assert a["epochs"] == b["epochs"] and a["metrics"] == b["metrics"]


def test_worker_processes_give_the_inline_results(tmp_path):
    ref = _inline_records(tmp_path, ["base", "fgm"])
    records = run_lab(toy_lab_task(epochs=1), ["base", "fgm"], seeds=1, n_train=40,
                      out=tmp_path / "procs", workers=2, threads=1, progress=False)  # fmt: skip
    assert len(records) == 2
    for r in records:
        _same_training(r, ref[cell_key(r)])
        assert r["wall_s"] > 0 and r["peak_mem_mb"] >= 0


def test_ray_executor_in_local_mode_gives_the_inline_results(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (extra 'ray')")
    ref = _inline_records(tmp_path, ["base"])
    records = run_lab(toy_lab_task(epochs=1), ["base"], seeds=1, n_train=40,
                      out=tmp_path / "ray", workers=1, executor="ray", threads=1,
                      progress=False)  # fmt: skip
    assert len(records) == 1
    _same_training(records[0], ref[cell_key(records[0])])


def _small_fgm(ctx):
    from danlu.adversarial import FGM

    return FGM(ctx.model, eps=0.1)


def test_user_atoms_extend_the_registry(tmp_path):
    from danlu.lab.atoms import ATOMS, Atom

    atoms = {**ATOMS, "fgm01": Atom("fgm01", "FGM, eps 0.1", "adversarial", make_trick=_small_fgm)}
    records = run_lab(toy_lab_task(epochs=1), ["base", "fgm01+ema"], seeds=1, n_train=40,
                      out=tmp_path, workers=0, atoms=atoms, progress=False)  # fmt: skip
    assert sorted(r["combo"] for r in records) == ["base", "ema+fgm01"]  # registry order
    with pytest.raises(ValueError, match="two adversarial tricks"):
        run_lab(toy_lab_task(epochs=1), ["fgm+fgm01"], out=tmp_path, atoms=atoms)


def test_n_train_larger_than_the_pool_is_refused_before_any_cell_runs(tmp_path):
    with pytest.raises(ValueError, match=r"n_train=1000 does not fit task 'toy'.*160 examples"):
        run_lab(toy_lab_task(), ["base"], n_train=[40, 1000], out=tmp_path, workers=2)
    assert not (tmp_path / "results.jsonl").exists()
