"""The README's custom-loop example runs as written (with a tiny model and loader)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_custom_loop_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loader = [make_batch(seed=i) for i in range(8)]
    scope = {"model": model, "opt": opt, "loader": loader, "loss_fn": loss_fn}
    exec(compile(code, str(README), "exec"), scope)  # noqa: S102
    tricks = scope["tricks"]
    assert tricks.state.step == 3 * 8 // 4 and tricks.state.epoch == 3
