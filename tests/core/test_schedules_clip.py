"""Warmup schedules and clipping tricks against hand formulas and torch / transformers."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

from danlu import Tricks
from danlu.optim import (
    ClipGradValue,
    GradNormMonitor,
    constant_warmup,
    cosine_warmup,
    grad_norm,
    linear_warmup,
    warmup_factor,
)


def _opt(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(sched, n):
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out


def test_linear_warmup_hand_values():
    lrs = _lrs(linear_warmup(_opt(2.0), warmup_steps=4, total_steps=8), 9)
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5, 0.0])


def test_cosine_and_constant_hand_values():
    lrs = _lrs(cosine_warmup(_opt(), warmup_steps=2, total_steps=6), 7)
    expected = [0.0, 0.5] + [0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(5)]
    assert lrs == pytest.approx(expected)
    assert _lrs(constant_warmup(_opt(), warmup_steps=2), 5) == pytest.approx([0, 0.5, 1, 1, 1])
    assert warmup_factor(10, "linear", 0, 10, min_factor=0.1) == pytest.approx(0.1)


def test_schedules_match_transformers():
    tf = pytest.importorskip("transformers", reason="transformers (extra hf) not installed")
    for ours, theirs in [
        (linear_warmup, tf.get_linear_schedule_with_warmup),
        (cosine_warmup, tf.get_cosine_schedule_with_warmup),
    ]:
        a = _lrs(ours(_opt(), 3, 17), 18)  # transformers' cosine rises again after total
        b = _lrs(theirs(_opt(), 3, 17), 18)
        assert a == pytest.approx(b, abs=1e-12)


def test_schedules_keep_per_group_lr_ratios():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.25}])
    sched = linear_warmup(opt, 2, 4)
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.5, 0.125])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"warmup_steps": -1, "total_steps": 5}, "warmup_steps must be an integer >= 0"),
        ({"warmup_steps": 6, "total_steps": 5}, "must not exceed total_steps"),
        ({"warmup_steps": 1, "total_steps": 0}, "total_steps must be an integer >= 1"),
    ],
)
def test_schedule_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        linear_warmup(_opt(), **kwargs)


def test_clip_grad_value_matches_torch():
    torch.manual_seed(0)
    a, b = TinyTextClassifier(), TinyTextClassifier()
    b.load_state_dict(a.state_dict())
    batch = make_batch(seed=1)
    opt_a = torch.optim.SGD(a.parameters(), lr=1.0)
    loss_fn(a, batch)[0].backward()
    torch.nn.utils.clip_grad_value_(a.parameters(), 0.01)
    opt_a.step()
    opt_b = torch.optim.SGD(b.parameters(), lr=1.0)
    Tricks([ClipGradValue(0.01)]).step(b, opt_b, batch, loss_fn)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], atol=0, rtol=0)


def test_monitor_records_pre_clip_norm():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    batch = make_batch(seed=2)
    loss_fn(model, batch)[0].backward()
    expected = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    model.zero_grad()
    monitor = GradNormMonitor()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = Tricks([monitor], max_grad_norm=1e-3).step(model, opt, batch, loss_fn)
    assert monitor.history == [pytest.approx(float(expected), rel=1e-6)]
    torch.testing.assert_close(state.grad_norm, expected)  # clip also reports the pre-clip norm
    assert float(grad_norm([torch.tensor([3.0]), torch.tensor([4.0])])) == 5.0
    assert float(grad_norm([torch.tensor([3.0, -7.0])], norm_type=math.inf)) == 7.0
