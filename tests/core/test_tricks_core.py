"""The orchestrator against plain PyTorch: accumulation, AMP, hook order, resume, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch, split_batch

from danlu import Order, Trick, Tricks
from danlu.optim import GradNormMonitor, Schedule, linear_warmup


def _model64(seed=0):
    torch.manual_seed(seed)
    return TinyTextClassifier().double()


def _loss64(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"]), logits


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulation_equals_one_big_batch(opt_cls, k):
    big = make_batch(n=16, seed=3)
    ref = _model64()
    ref_opt = opt_cls(ref.parameters(), lr=0.1)
    _loss64(ref, big)[0].backward()
    ref_opt.step()

    model = _model64()
    opt = opt_cls(model.parameters(), lr=0.1)
    tricks = Tricks(accumulate=k)
    for i, micro in enumerate(split_batch(big, k)):
        state = tricks.step(model, opt, micro, _loss64)
        assert state.stepped == (i == k - 1)
    assert tricks.state.step == 1
    assert_params_close(model, ref, atol=1e-6)
    assert all(p.grad is None for p in model.parameters()), "grads are zeroed after the step"


def test_uneven_micro_batches_with_num_items_equal_one_big_batch():
    big = make_batch(n=10, seed=4)
    ref = _model64()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    _loss64(ref, big)[0].backward()
    ref_opt.step()

    model = _model64()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tricks = Tricks(accumulate=3)
    for lo, hi in [(0, 5), (5, 8), (8, 10)]:  # sizes 5, 3, 2
        micro = {k: v[lo:hi] for k, v in big.items()}
        tricks.step(model, opt, micro, _loss64, num_items=hi - lo)
    assert tricks.state.step == 1
    assert_params_close(model, ref, atol=1e-6)


def _plain_sgd_step(model, micro_batches, lr):
    """The reference: one SGD step on the concatenation of the micro-batches (equal sizes,
    so the big batch's mean loss is the mean of the micro-batch losses)."""
    big = {k: torch.cat([m[k] for m in micro_batches]) for k in micro_batches[0]}
    model.zero_grad()
    _loss64(model, big)[0].backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    model.zero_grad()


@pytest.mark.parametrize("amp_scaler", [False, True])
def test_every_window_full_or_forced_partial_equals_a_plain_step_on_its_micro_batches(amp_scaler):
    """accumulate=4, epochs of 5 micro-batches, boundary=True on each epoch's last: windows
    are [0-3], [4] | [5-8], [9] | ... counted from the last step, and each update equals a
    plain step on the concatenated micro-batches of its window (regression: the window used
    to be counted from a never-reset counter, giving shrunk updates from epoch 2 on)."""
    lr, k, per_epoch, epochs = 0.3, 4, 5, 3
    model, ref = _model64(), _model64()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10) if amp_scaler else None
    tricks = Tricks(accumulate=k, grad_scaler=scaler)
    window: list[dict] = []
    steps_after = []
    for epoch in range(epochs):
        for i in range(per_epoch):
            micro = make_batch(n=4, seed=100 * epoch + i)
            window.append(micro)
            state = tricks.step(model, opt, micro, _loss64, boundary=True if i == per_epoch - 1 else None)
            if state.stepped:
                steps_after.append(epoch * per_epoch + i)
                _plain_sgd_step(ref, window, lr)
                window = []
                assert_params_close(model, ref, atol=1e-12)
        tricks.epoch_end()
    assert steps_after == [3, 4, 8, 9, 13, 14]
    assert tricks.state.window == 0


def test_boundary_false_extends_a_window_and_its_mean_covers_every_micro_batch():
    lr = 0.2
    model, ref = _model64(), _model64()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    tricks = Tricks(accumulate=2)
    micros = [make_batch(n=4, seed=s) for s in range(3)]
    assert not tricks.step(model, opt, micros[0], _loss64).stepped
    assert not tricks.step(model, opt, micros[1], _loss64, boundary=False).stepped
    assert tricks.step(model, opt, micros[2], _loss64).stepped  # window of 3 >= accumulate
    _plain_sgd_step(ref, micros, lr)
    assert_params_close(model, ref, atol=1e-12)


def test_window_survives_a_state_dict_round_trip():
    model = _model64()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tricks = Tricks(accumulate=3)
    tricks.step(model, opt, make_batch(seed=0), _loss64, boundary=True)
    tricks.step(model, opt, make_batch(seed=1), _loss64)
    fresh = Tricks(accumulate=3)
    fresh.load_state_dict(tricks.state_dict())
    assert fresh.state.window == 1 and fresh.state.micro_step == 2
    assert not fresh.window_ends() and fresh.state.step == 1


def test_clip_grad_norm_matches_torch_by_hand():
    batch = make_batch(seed=5)
    ref = _model64()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    _loss64(ref, batch)[0].backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    ref_opt.step()

    model = _model64()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    state = Tricks(max_grad_norm=0.05).step(model, opt, batch, _loss64)
    assert expected_norm > 0.05, "the test must actually clip"
    torch.testing.assert_close(state.grad_norm, expected_norm.detach())
    assert_params_close(model, ref, atol=1e-12)


class _RecordGrads(Trick):
    order = Order.MONITOR

    def before_step(self, optimizer, state):
        self.grads = [p.grad.detach().clone() for p in state.model.parameters()]


def test_fp16_clipping_and_monitor_see_unscaled_gradients():
    batch = make_batch(seed=6)
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    model = copy.deepcopy(ref)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = loss_fn(ref, batch)[0]
    loss.backward()
    ref_grads = [p.grad for p in ref.parameters()]

    rec = _RecordGrads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    tricks = Tricks([rec, GradNormMonitor()], amp="fp16", grad_scaler=scaler)
    state = tricks.step(model, opt, batch, loss_fn)
    for g, r in zip(rec.grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-3, rtol=1e-2)
    ref_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in ref_grads]))
    torch.testing.assert_close(state.grad_norm, ref_norm, atol=1e-3, rtol=1e-2)
    assert state.stepped


class _Record(Trick):
    def __init__(self, name, log, order):
        self.name, self.log, self.order = name, log, order

    def on_batch(self, batch, state):
        self.log.append((self.name, "on_batch"))
        return batch

    def compute_loss(self, forward, batch, state):
        self.log.append((self.name, "compute_loss"))
        return forward(batch)

    def after_backward(self, closure, state):
        self.log.append((self.name, "after_backward"))

    def before_step(self, optimizer, state):
        self.log.append((self.name, "before_step"))

    def after_step(self, optimizer, state):
        self.log.append((self.name, f"after_step@{state.step}"))

    def on_epoch_end(self, state):
        self.log.append((self.name, f"epoch_end@{state.epoch}"))


def test_hook_order_follows_declared_order_and_the_documented_loop():
    log: list = []
    late, early = _Record("late", log, order=50), _Record("early", log, order=5)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tricks = Tricks([late, early], accumulate=2)  # list order is not run order
    tricks.step(model, opt, make_batch(seed=0), loss_fn)
    tricks.step(model, opt, make_batch(seed=1), loss_fn)
    tricks.epoch_end()
    micro = [
        ("early", "on_batch"),
        ("late", "on_batch"),
        ("early", "compute_loss"),
        ("late", "compute_loss"),
        ("early", "after_backward"),
        ("late", "after_backward"),
    ]
    assert log == micro + micro + [
        ("early", "before_step"),
        ("late", "before_step"),
        ("early", "after_step@1"),
        ("late", "after_step@1"),
        ("early", "epoch_end@1"),
        ("late", "epoch_end@1"),
    ]


class _AddToLoss(Trick):
    order = Order.LOSS_WRAP

    def compute_loss(self, forward, batch, state):
        loss, logits = forward(batch)
        return loss + 1.0, logits


class _DoubleLoss(Trick):
    order = Order.LOSS

    def compute_loss(self, forward, batch, state):
        loss, logits = forward(batch)
        return 2.0 * loss, logits


def test_compute_loss_chain_composes_outer_to_inner():
    batch = make_batch(seed=2)
    model = TinyTextClassifier()
    plain = loss_fn(model, batch)[0].detach()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = Tricks([_DoubleLoss(), _AddToLoss()]).step(model, opt, batch, loss_fn)
    torch.testing.assert_close(state.loss, 2.0 * plain + 1.0)  # (loss*2)+1, not (loss+1)*2


class _CountClosure(Trick):
    """A fake adversarial trick: the closure's extra backward doubles the gradient."""

    order = Order.ADVERSARIAL

    def after_backward(self, closure, state):
        self.loss = closure()


def test_closure_reruns_the_chain_with_the_same_scaling():
    batch = make_batch(seed=7)
    ref = _model64()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    (2 * _loss64(ref, batch)[0]).backward()
    ref_opt.step()

    model = _model64()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    counter = _CountClosure()
    Tricks([counter, _AddToLoss()]).step(model, opt, batch, _loss64)
    assert_params_close(model, ref, atol=1e-10)
    torch.testing.assert_close(counter.loss, _loss64(_model64(), batch)[0] + 1.0)


def _inf_loss_fn(model, batch):
    loss, logits = loss_fn(model, batch)
    return loss + model.head.weight.sum() * float("inf"), logits


def test_skipped_fp16_step_runs_no_after_step_and_keeps_the_schedule():
    log: list = []
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = linear_warmup(opt, warmup_steps=2, total_steps=10)
    tricks = Tricks([Schedule(sched), _Record("rec", log, 0)], amp="fp16")
    tricks.step(model, opt, make_batch(seed=0), loss_fn)  # a real step
    lr, before = opt.param_groups[0]["lr"], copy.deepcopy(model.state_dict())
    state = tricks.step(model, opt, make_batch(seed=1), _inf_loss_fn)
    assert not state.stepped and state.step == 1
    assert opt.param_groups[0]["lr"] == lr and sched.last_epoch == 1
    assert [e for _, e in log if e.startswith("after_step")] == ["after_step@1"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    state = tricks.step(model, opt, make_batch(seed=2), loss_fn)
    assert state.stepped and state.step == 2 and sched.last_epoch == 2


def _train(tricks, model, opt, seeds):
    for s in seeds:
        tricks.step(model, opt, make_batch(seed=s), loss_fn)


def _fresh(seed=0):
    torch.manual_seed(seed)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tricks = Tricks(
        [GradNormMonitor(), Schedule(linear_warmup(opt, 2, 12))],
        accumulate=2,
        amp="fp16",
        max_grad_norm=1.0,
    )
    return model, opt, tricks


def test_state_dict_round_trip_continues_exactly():
    model_a, opt_a, tricks_a = _fresh()
    _train(tricks_a, model_a, opt_a, range(12))

    model_b, opt_b, tricks_b = _fresh()
    _train(tricks_b, model_b, opt_b, range(6))
    saved = copy.deepcopy(
        {"m": model_b.state_dict(), "o": opt_b.state_dict(), "t": tricks_b.state_dict()}
    )
    assert saved["t"]["scaler"] is not None
    model_c, opt_c, tricks_c = _fresh(seed=1)
    model_c.load_state_dict(saved["m"])
    opt_c.load_state_dict(saved["o"])
    tricks_c.load_state_dict(saved["t"])
    _train(tricks_c, model_c, opt_c, range(6, 12))
    for k, v in model_a.state_dict().items():
        assert torch.equal(v, model_c.state_dict()[k]), k
    assert tricks_c.state.step == tricks_a.state.step == 6
    assert tricks_c.tricks[0].history == tricks_a.tricks[0].history
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]


def test_epoch_end_advances_epoch():
    tricks = Tricks()
    tricks.epoch_end()
    tricks.epoch_end()
    assert tricks.state.epoch == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_accumulate_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=r"accumulate must be an integer >= 1.*" + repr(bad)[:2]):
        Tricks(accumulate=bad)


def test_unknown_amp_is_rejected():
    with pytest.raises(ValueError, match=r"amp must be None, 'fp16' or 'bf16', got 'fp8'"):
        Tricks(amp="fp8")


def test_non_scalar_loss_is_rejected_with_its_shape():
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def per_example(model, batch):
        return F.cross_entropy(model(batch["input_ids"]), batch["labels"], reduction="none")

    with pytest.raises(ValueError, match=r"scalar loss tensor, got \(8,\)"):
        Tricks().step(model, opt, make_batch(), per_example)


def test_other_bad_inputs():
    with pytest.raises(TypeError, match="Trick"):
        Tricks([object()])
    with pytest.raises(ValueError, match="max_grad_norm must be a finite number > 0 .*got -1"):
        Tricks(max_grad_norm=-1)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="num_items must be > 0"):
        Tricks().step(model, opt, make_batch(), loss_fn, num_items=0)
    with pytest.raises(ValueError, match="saved with tricks"):
        Tricks([GradNormMonitor()]).load_state_dict(Tricks().state_dict())
    with pytest.raises(ValueError, match="no parameters"):
        Tricks().step(torch.nn.ReLU(), opt, make_batch(), loss_fn)


class _ReplaceLoss(Trick):
    order = Order.LOSS_WRAP
    replaces_loss = True

    def compute_loss(self, forward, batch, state):
        _, logits = forward(batch)
        return F.cross_entropy(logits, batch["labels"]), logits


def test_a_loss_replacing_trick_may_not_wrap_another_loss_trick():
    with pytest.raises(ValueError, match=r"_ReplaceLoss.*_DoubleLoss.*silently dropped"):
        Tricks([_ReplaceLoss(), _DoubleLoss()])
    inner = _ReplaceLoss()
    inner.order = Order.LOSS + 1  # innermost: nothing is dropped
    Tricks([inner, _DoubleLoss()])
    Tricks([_ReplaceLoss(), _CountClosure()])  # after_backward-only tricks are not in the chain
