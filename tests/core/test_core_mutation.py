"""Details of danlu.core the behavioural tests leave open (found by mutation testing, see
docs/mutation.md): exact errors, the base Trick's pass-through hooks, State.grad_scale,
unwrapping, autocast dtypes, counters and state_dict contents."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from danlu import Order, State, Trick, Tricks
from danlu.core import optimizer_grads, unwrap_model


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _batch(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loss(model, batch):
    logits = model(batch[0])
    return F.cross_entropy(logits.float(), batch[1]), logits


def test_order_bands_as_documented():
    bands = ["DATA", "LOSS_WRAP", "MIX", "LOSS", "ADVERSARIAL", "MONITOR", "CLIP", "SCHEDULE"]
    values = [getattr(Order, b) for b in [*bands, "AVERAGE"]]
    assert values == [0, 10, 15, 20, 30, 40, 50, 60, 70]
    assert Trick.order == Order.LOSS and Trick.replaces_loss is False


def test_state_defaults_and_grad_scale():
    st = State()
    assert (st.accumulate, st.step, st.micro_step, st.window, st.epoch) == (1, 0, 0, 0, 0)
    assert not st.is_boundary and not st.stepped and st.extra == {}
    assert State().extra is not st.extra
    assert st.grad_scale == 1.0
    st.scaler = torch.amp.GradScaler("cpu", enabled=False, init_scale=8.0)
    assert st.grad_scale == 1.0
    st.scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    assert st.grad_scale == 8.0 and isinstance(st.grad_scale, float)


def test_base_trick_is_a_pass_through():
    t = Trick()
    batch, st = object(), State()
    assert t.on_batch(batch, st) is batch
    sentinel = (torch.tensor(1.0), None)
    assert t.compute_loss(lambda b: sentinel if b is batch else None, batch, st) is sentinel
    assert t.after_backward(lambda: None, st) is None
    assert t.before_step(None, st) is None and t.after_step(None, st) is None
    assert t.on_epoch_end(st) is None
    assert t.state_dict() == {} and repr(t) == "Trick()"
    t.load_state_dict({})
    with pytest.raises(ValueError, match=r"Trick keeps no state.*keys \['a', 'b'\]; was it"):
        t.load_state_dict({"b": 1, "a": 2})


def test_unwrap_model_through_wrappers():
    model = nn.Linear(2, 2)
    assert unwrap_model(model) is model
    assert unwrap_model(nn.DataParallel(model)) is model

    class Compiled(nn.Module):  # torch.compile's OptimizedModule keeps the module here
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    assert unwrap_model(Compiled(nn.DataParallel(model))) is model


def test_optimizer_grads_only_existing_ones():
    model, opt = _setup()
    assert optimizer_grads(opt) == []
    model.weight.grad = torch.ones_like(model.weight)
    assert len(optimizer_grads(opt)) == 1 and optimizer_grads(opt)[0] is model.weight.grad


@pytest.mark.parametrize(
    ("out", "match"),
    [
        ((torch.tensor(1.0), None, None), "a tuple of length 3"),
        ([torch.tensor(1.0)], "a list of length 1"),
        (torch.ones(2), r"scalar loss tensor, got \(2,\); reduce it"),
        ((1.0, None), "scalar loss tensor, got float"),
    ],
)
def test_loss_fn_results_refused(out, match):
    model, opt = _setup()
    with pytest.raises(ValueError, match=match):
        Tricks().step(model, opt, _batch(), lambda m, b: out)


def test_loss_of_shape_one_and_list_results_accepted():
    model, opt = _setup()

    def loss_fn(m, b):
        loss, logits = _loss(m, b)
        return [loss.reshape(1), logits]

    st = Tricks().step(model, opt, _batch(), loss_fn)
    assert st.loss.shape == () and st.logits.shape == (6, 3) and not st.logits.requires_grad


def test_model_without_parameters_refused():
    with pytest.raises(ValueError, match="no parameters: there is nothing to train"):
        Tricks().step(nn.Identity(), torch.optim.SGD([torch.zeros(1)], lr=1.0), _batch(), _loss)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "1"])
def test_max_grad_norm_refused(bad):
    with pytest.raises(
        ValueError, match=rf"max_grad_norm must be a finite number > 0.*got {bad!r}"
    ):
        Tricks(max_grad_norm=bad)


def test_construction_details_and_repr():
    a, b = Trick(), Trick()
    a.order, b.order = Order.CLIP, Order.DATA
    tricks = Tricks([a, b], accumulate=3, amp="bf16", max_grad_norm=2)
    assert list(tricks) == [b, a] and tricks.max_grad_norm == 2.0
    assert isinstance(tricks.max_grad_norm, float) and tricks.state.accumulate == 3
    assert repr(tricks) == "Tricks([Trick(), Trick()], accumulate=3, amp='bf16', max_grad_norm=2.0)"
    assert repr(Tricks()) == "Tricks([], accumulate=1, amp=None, max_grad_norm=None)"
    with pytest.raises(TypeError, match="Tricks takes danlu.Trick objects, got Linear; wrap"):
        Tricks([nn.Linear(1, 1)])
    with pytest.raises(ValueError, match=r"amp must be None, 'fp16' or 'bf16', got 'fp32'"):
        Tricks(amp="fp32")
    with pytest.raises(ValueError, match=r"accumulate must be an integer >= 1 .*got 2.0"):
        Tricks(accumulate=2.0)


@pytest.mark.parametrize(
    ("amp", "dtype"), [(None, None), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
)
def test_autocast_dtype_and_scaler(amp, dtype):
    model, opt = _setup()
    seen = []

    def loss_fn(m, b):
        on = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return _loss(m, b)

    tricks = Tricks(amp=amp)
    st = tricks.step(model, opt, _batch(), loss_fn)
    assert seen == [dtype]
    assert (st.scaler is not None) == (amp == "fp16")


def test_own_grad_scaler_is_used():
    model, opt = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    tricks = Tricks(amp="fp16", grad_scaler=scaler)
    assert tricks.step(model, opt, _batch(), _loss).scaler is scaler
    assert tricks.state_dict()["scaler"]["scale"] == 4.0


def test_counters_flags_and_state_dict_contents():
    model, opt = _setup()
    tricks = Tricks(accumulate=2)
    st = tricks.step(model, opt, _batch(0), _loss)
    assert (st.stepped, st.is_boundary, st.step, st.micro_step, st.window) == (
        False, False, 0, 1, 1,
    )  # fmt: skip
    assert st.model is model and st.optimizer is opt and st.scaler is None
    st = tricks.step(model, opt, _batch(1), _loss)
    assert (st.stepped, st.is_boundary, st.step, st.micro_step, st.window) == (
        True, True, 1, 2, 0,
    )  # fmt: skip
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)
    tricks.step(model, opt, _batch(2), _loss)
    tricks.epoch_end()
    assert tricks.state_dict() == {
        "step": 1, "micro_step": 3, "window": 1, "epoch": 1, "scaler": None, "tricks": [],
    }  # fmt: skip


def test_load_state_dict_window_default_and_pending_scaler():
    model, opt = _setup()
    fresh = Tricks(accumulate=4, amp="fp16")
    saved = {"step": 5, "micro_step": 22, "epoch": 2, "scaler": None, "tricks": []}
    fresh.load_state_dict(saved)  # an old state_dict without "window"
    assert (fresh.state.step, fresh.state.micro_step, fresh.state.epoch) == (5, 22, 2)
    assert fresh.state.window == 22 % 4
    scaler_state = torch.amp.GradScaler("cpu", init_scale=16.0).state_dict()
    fresh.load_state_dict({**saved, "window": 0, "scaler": scaler_state})
    assert fresh.state.window == 0
    st = fresh.step(model, opt, _batch(), _loss)  # the scaler is made here, then loaded
    assert st.scaler.get_scale() == 16.0
    with pytest.raises(
        ValueError, match=r"saved with tricks \['Trick'\], but these Tricks hold \[\]"
    ):
        fresh.load_state_dict({**saved, "tricks": [("Trick", {})]})


def test_epoch_end_hook_sees_the_new_epoch():
    seen = []

    class Epochs(Trick):
        def on_epoch_end(self, state):
            seen.append(state.epoch)

    tricks = Tricks([Epochs()])
    tricks.epoch_end()
    tricks.epoch_end()
    assert seen == [1, 2]


def test_max_grad_norm_clips_and_records_the_pre_clip_norm():
    model, opt = _setup()
    ref, _ = _setup()
    batch = _batch()
    _loss(ref, batch)[0].backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in ref.parameters()])
    grads = {}
    opt.step = lambda closure=None: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters()}
    )
    st = Tricks(max_grad_norm=0.01).step(model, opt, batch, _loss)
    torch.testing.assert_close(st.grad_norm, norm)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n], p.grad * (0.01 / (norm + 1e-6)), msg=n)


@pytest.mark.parametrize("bad", [0, -2.0])
def test_num_items_must_be_positive(bad):
    model, opt = _setup()
    with pytest.raises(ValueError, match=rf"num_items must be > 0, got {bad!r}"):
        Tricks().step(model, opt, _batch(), _loss, num_items=bad)


def test_num_items_on_every_micro_batch_or_none():
    model, opt = _setup()
    tricks = Tricks(accumulate=2)
    tricks.step(model, opt, _batch(), _loss, num_items=6)
    with pytest.raises(ValueError, match="num_items was given for earlier micro-batches"):
        tricks.step(model, opt, _batch(), _loss)


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_messages_in_full():
    model, opt = _setup()
    scalar = (
        "loss_fn must return a scalar loss tensor, got (2,); reduce it (e.g. loss.mean()) or "
        "return (loss, logits)"
    )
    with pytest.raises(ValueError, match=_exact(scalar)):
        Tricks().step(model, opt, _batch(), lambda m, b: torch.ones(2))
    with pytest.raises(
        ValueError, match=_exact("the model has no parameters: there is nothing to train")
    ):
        Tricks().step(nn.Identity(), opt, _batch(), _loss)
    notrick = (
        "Tricks takes danlu.Trick objects, got Linear; wrap drop-in objects in their Trick form"
    )
    with pytest.raises(TypeError, match=_exact(notrick)):
        Tricks([nn.Linear(1, 1)])
    tricks = Tricks(accumulate=2)
    tricks.step(model, opt, _batch(), _loss, num_items=0.5)  # fractional counts are fine
    mixed = (
        "num_items was given for earlier micro-batches of this window but not for this one: "
        "pass it on every micro-batch or on none"
    )
    with pytest.raises(ValueError, match=_exact(mixed)):
        tricks.step(model, opt, _batch(), _loss)


def test_loss_replacing_trick_outside_two_loss_tricks_message():
    class Loss(Trick):
        def compute_loss(self, forward, batch, state):
            return forward(batch)

    class Outer(Loss):
        replaces_loss = True
        order = Order.DATA

    message = (
        "Outer() recomputes the loss from the logits, so the loss of Loss(), Loss() inside it "
        "would be silently dropped; give Outer that loss instead (e.g. loss_from_logits=...), "
        "or change the tricks' order so the loss-replacing trick is innermost"
    )
    with pytest.raises(ValueError, match=_exact(message)):
        Tricks([Loss(), Outer(), Loss(), Trick()])
    inner = Outer()
    inner.order = Order.AVERAGE
    Tricks([Loss(), inner])  # innermost: fine


def test_fp16_scaler_is_made_once_for_the_model_device():
    model, opt = _setup()
    tricks = Tricks(amp="fp16", accumulate=2)
    first = tricks.step(model, opt, _batch(0), _loss).scaler
    assert first.is_enabled() and tricks.state.grad_scale == 65536.0
    for i in range(1, 4):
        assert tricks.step(model, opt, _batch(i), _loss).scaler is first


def test_scaler_state_loads_into_an_existing_scaler():
    model, opt = _setup()
    a = Tricks(amp="fp16", grad_scaler=torch.amp.GradScaler("cpu", init_scale=32.0))
    a.step(model, opt, _batch(), _loss)
    b = Tricks(amp="fp16")
    b.step(model, opt, _batch(), _loss)  # b's scaler exists now
    b.load_state_dict(a.state_dict())
    assert b.state.scaler.get_scale() == a.state.scaler.get_scale() == 32.0


def test_loss_only_loss_fn_leaves_logits_none_and_after_step_gets_the_optimizer():
    seen = []

    class Spy(Trick):
        def after_step(self, optimizer, state):
            seen.append(optimizer)

    model, opt = _setup()
    st = Tricks([Spy()]).step(model, opt, _batch(), lambda m, b: _loss(m, b)[0])
    assert st.logits is None and st.loss.shape == () and seen == [opt]


def test_num_items_windows_one_after_another_equal_plain_steps():
    model, opt = _setup()
    ref, ref_opt = _setup()
    tricks = Tricks(accumulate=2)
    for w in range(2):
        small, big = _batch(10 * w, n=2), _batch(10 * w + 1, n=5)
        tricks.step(model, opt, small, _loss, num_items=2)
        tricks.step(model, opt, big, _loss, num_items=5)
        both = tuple(torch.cat([s, b]) for s, b in zip(small, big))
        _loss(ref, both)[0].backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)


def test_a_window_without_num_items_after_one_with_them():
    model, opt = _setup()
    ref, ref_opt = _setup()
    tricks = Tricks(accumulate=2)
    for w, counts in enumerate([(2, 5), (None, None)]):
        small, big = _batch(10 * w, n=2), _batch(10 * w + 1, n=5)
        for mb, n in zip((small, big), counts):
            tricks.step(model, opt, mb, _loss, num_items=n)
        if counts[0] is None:  # the mean of the two micro-batch means
            ((_loss(ref, small)[0] + _loss(ref, big)[0]) / 2).backward()
        else:
            _loss(ref, tuple(torch.cat([s, b]) for s, b in zip(small, big)))[0].backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
