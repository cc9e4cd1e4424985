"""Every registered trick (tests/registry/*.py) under accumulation, AMP and resume."""

from __future__ import annotations

import copy
import importlib.util
import io
from pathlib import Path

import pytest
import torch
from helpers import TinyTextClassifier, clone_params, loss_fn, make_batch

from danlu import Tricks


def _load_factories():
    out = {}
    for path in sorted((Path(__file__).parent / "registry").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"registry_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        for name, factory in mod.FACTORIES.items():
            out[f"{path.stem}.{name}"] = factory
    return out


FACTORIES = _load_factories()
NAMES = sorted(FACTORIES) or ["none"]


def _setup(name, seed=0, **kw):
    torch.manual_seed(seed)
    model = TinyTextClassifier(dropout=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trick = FACTORIES[name](model, opt) if name in FACTORIES else None
    tricks = Tricks([trick] if trick is not None else [], **kw)
    return model, opt, tricks


def _run(model, opt, tricks, steps, start=0):
    for i in range(start, start + steps):
        torch.manual_seed(1000 + i)  # dropout / random tricks see the same randomness
        state = tricks.step(model, opt, make_batch(seed=i), loss_fn)
        assert torch.isfinite(state.loss)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_trick_trains_under_accumulation_and_amp(name, amp):
    model, opt, tricks = _setup(name, accumulate=2, amp=amp)
    before = clone_params(model)
    _run(model, opt, tricks, 6)
    assert tricks.state.step == 3
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "nothing was trained"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


@pytest.mark.parametrize("name", NAMES)
def test_trick_resume_is_bit_exact(name):
    model_a, opt_a, tricks_a = _setup(name, accumulate=2)
    _run(model_a, opt_a, tricks_a, 8)

    model_b, opt_b, tricks_b = _setup(name, accumulate=2)
    _run(model_b, opt_b, tricks_b, 4)
    buf = io.BytesIO()
    torch.save(
        {"model": model_b.state_dict(), "opt": opt_b.state_dict(), "tricks": tricks_b.state_dict()},
        buf,
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model_c, opt_c, tricks_c = _setup(name, seed=123, accumulate=2)  # fresh, different init
    model_c.load_state_dict(saved["model"])
    opt_c.load_state_dict(saved["opt"])
    tricks_c.load_state_dict(copy.deepcopy(saved["tricks"]))
    _run(model_c, opt_c, tricks_c, 4, start=4)
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_c.state_dict()[k]), k
    assert tricks_c.state.step == tricks_a.state.step
    _assert_same_state(tricks_a.state_dict(), tricks_c.state_dict())


def _assert_same_state(a, b, path="tricks"):
    """Trick state (EMA shadows, SWA averages, generator states ...) equal after resume."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same_state(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:  # NaN
        assert b != b, path
    else:
        assert a == b, path
