"""Delayed: before its start the loop equals the loop without the trick bit for bit; from
the start on it equals the trick."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

import danlu
from danlu.adversarial import FGM
from danlu.loss import Focal, RDrop


def _train(model, tricks, batches):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for b in batches:
        tricks.step(model, opt, b, loss_fn)
    return opt


def test_before_start_is_plain_loop_after_start_is_the_trick():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    plain, ref = copy.deepcopy(model), copy.deepcopy(model)
    batches = [make_batch(seed=i) for i in range(8)]
    delayed = danlu.Tricks([danlu.Delayed(FGM(model, eps=0.5), start_step=2)], accumulate=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    _train(plain, danlu.Tricks([], accumulate=2), batches[:4])
    for b in batches[:4]:  # two optimizer steps: the trick is not active yet
        delayed.step(model, opt, b, loss_fn)
    for p, q in zip(model.parameters(), plain.parameters()):
        assert torch.equal(p, q)
    # from step 2 on the delayed loop equals FGM itself, started on the same weights
    ref.load_state_dict(model.state_dict())
    fgm = danlu.Tricks([FGM(ref, eps=0.5)], accumulate=2)
    for b in batches[4:]:
        delayed.step(model, opt, b, loss_fn)
        fgm.step(ref, ref_opt, b, loss_fn)
    assert delayed.state.step == 4
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    assert not torch.equal(model.hidden.weight, plain.hidden.weight)


def test_start_epoch_and_compute_loss_chain():
    late = danlu.Delayed(RDrop(alpha=1.0), start_epoch=1)
    assert isinstance(late, danlu.Delayed) and late.order == RDrop.order
    tricks = danlu.Tricks([late])
    model = TinyTextClassifier(dropout=0.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = make_batch()
    before = copy.deepcopy(model)
    torch.manual_seed(1)
    loss0 = tricks.step(model, opt, b, loss_fn).loss.clone()
    torch.manual_seed(1)
    plain0, _ = loss_fn(before, b)  # one forward, same dropout mask: no R-Drop yet
    assert torch.equal(loss0, plain0.detach())
    assert not late.active(danlu.State(epoch=0))
    tricks.epoch_end()
    assert late.active(tricks.state)
    # the wrapper of a trick without compute_loss stays out of the chain: a loss swap
    # (Focal) outside a delayed FGM is allowed, as it is outside FGM itself
    danlu.Tricks([Focal(gamma=2.0), danlu.Delayed(FGM(model), start_step=1)])
    assert type(danlu.Delayed(FGM(model), start_step=1)).compute_loss is danlu.Trick.compute_loss
    assert repr(late).endswith("start_epoch=1)")
    before = copy.deepcopy(model)
    torch.manual_seed(1)
    loss1 = tricks.step(model, opt, b, loss_fn).loss
    torch.manual_seed(1)
    ref = RDrop(alpha=1.0).compute_loss(lambda x: loss_fn(before, x), b, tricks.state)[0]
    assert torch.equal(loss1, ref.detach())  # from epoch 1 on: R-Drop's two passes


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"start_step": 1, "start_epoch": 1}, "exactly one"),
        ({"start_step": -1}, "start_step must be an integer >= 0"),
        ({"start_epoch": 1.5}, "start_epoch must be an integer >= 0"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        danlu.Delayed(RDrop(), **kwargs)
    with pytest.raises(TypeError, match="danlu.Trick"):
        danlu.Delayed(object(), start_step=1)


def test_state_dict_is_the_wrapped_tricks():
    g = torch.Generator().manual_seed(3)
    from danlu.adversarial import FreeLB

    model = TinyTextClassifier()
    inner = FreeLB(model, generator=g)
    d = danlu.Delayed(inner, start_step=5)
    assert set(d.state_dict()) == {"generator"}
    d.load_state_dict(inner.state_dict())
