"""Lookahead wrapper: the math against a hand-written reference, state_dict round trip,
use inside Tricks with fp16, validation."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch
from torch import nn

from danlu import Tricks
from danlu.optim import lookahead

pytest.importorskip("pytorch_optimizer")


def test_matches_hand_written_lookahead():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    lr, k, alpha = 0.1, 2, 0.5
    opt = lookahead(torch.optim.SGD(model.parameters(), lr=lr), k=k, alpha=alpha)
    fast = [p.detach().clone() for p in model.parameters()]
    slow = [p.clone() for p in fast]
    for step in range(1, 8):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        # reference: plain SGD on the fast weights, sync every k steps
        w, b = (t.clone().requires_grad_(True) for t in fast)
        ((x @ w.T + b - y) ** 2).mean().backward()
        fast = [w.detach() - lr * w.grad, b.detach() - lr * b.grad]
        if step % k == 0:
            slow = [s + alpha * (f - s) for s, f in zip(slow, fast)]
            fast = [s.clone() for s in slow]
        for p, f in zip(model.parameters(), fast):
            torch.testing.assert_close(p.detach(), f, atol=1e-6, rtol=0, msg=f"step {step}")


def test_state_dict_round_trip_mid_cycle_is_bit_exact():
    def make(seed):
        torch.manual_seed(seed)
        model = TinyTextClassifier()
        return model, lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=3, alpha=0.6)

    def train(model, opt, steps):
        for i in steps:
            opt.zero_grad()
            loss_fn(model, make_batch(seed=i))[0].backward()
            opt.step()

    model_a, opt_a = make(0)
    train(model_a, opt_a, range(8))
    model_b, opt_b = make(0)
    train(model_b, opt_b, range(4))  # 4 = one sync at 3, one step into the next cycle
    buf = io.BytesIO()
    torch.save({"m": model_b.state_dict(), "o": opt_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model_c, opt_c = make(1)
    model_c.load_state_dict(saved["m"])
    opt_c.load_state_dict(saved["o"])
    train(model_c, opt_c, range(4, 8))
    for (n, a), c in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(a, c), n


def test_inside_tricks_with_fp16_scaler():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2), k=2)
    before = model.head.weight.detach().clone()
    tricks = Tricks([], amp="fp16", accumulate=2)
    for i in range(8):
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
    assert tricks.state.step == 4
    assert opt.param_groups[0]["counter"] == 0  # two full cycles of k=2
    assert not torch.equal(before, model.head.weight)


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"k": 0}, ValueError, "k must be"),
        ({"k": 2.5}, ValueError, "k must be"),
        ({"alpha": 0.0}, ValueError, "alpha must be in"),
        ({"alpha": 1.5}, ValueError, "alpha must be in"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    base = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(err, match=match):
        lookahead(base, **kwargs)


def test_needs_an_optimizer_instance():
    with pytest.raises(TypeError, match="torch.optim.Optimizer instance"):
        lookahead(nn.Linear(2, 2).parameters())
