"""Every registered trick (tests/registry/*.py) under accumulation, AMP and resume."""

from __future__ import annotations

import copy
import importlib.util
import io
from pathlib import Path

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch, split_batch

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


# What k accumulated micro-batches must equal, per trick (no dropout, plain SGD):
# "big": the same trick run without accumulation on the concatenated batch (the trick sees the
#   window's mean gradient or a per-example mean loss: clipping, schedules, averaging, loss swaps);
# "micro": the mean of the updates the trick makes on each micro-batch alone (adversarial and
#   noise tricks attack / perturb each micro-batch with its own gradient), checked on the second
#   window so that tricks starting at step 1 are active;
# None: not defined, because the trick draws per micro-batch what the big batch draws once
#   (a mixing partner and lambda, an unlabelled batch): those keep the smoke check below, and
#   test_per_micro_batch_draws_... compares them with the same draws made one micro-batch at a time.
REFERENCE = {
    "adversarial.AWP": "micro",
    "adversarial.FGM": "micro",
    "adversarial.FGM-hook": "micro",
    "adversarial.FreeLB": "big",
    "adversarial.PGD": "micro",
    "adversarial.PGD-hook": "micro",
    "core.ClipGradNorm": "big",
    "core.ClipGradValue": "big",
    "core.GradNormMonitor": "big",
    "core.Schedule": "big",
    "data.EmbeddingMixup": None,  # partner and lambda drawn per micro-batch
    "data.ManifoldMixup": None,
    "data.SentenceMixup": None,
    "data.TokenCutMix": None,
    "loss.Focal": "big",
    "loss.LabelSmoothing": "big",
    "loss.RDrop": "big",
    "loss.RDropDuplicate": "big",
    "loss.TemperatureCE": "big",
    "optim.EMA": "big",
    "optim.EMA_warmup_every2": "big",
    "optim.FMA": "big",
    "optim.SWA": "big",
    "predict.SnapshotEnsemble": "big",
    "semi.Delayed-FGM": "micro",
    "semi.FixMatch": None,  # one unlabelled batch per micro-batch
    "semi.GaussianNoise": "micro",
    "semi.NEFTune": "micro",
    "semi.UDA": None,
    "semi.UDA-tsa": "micro",
    "semi.Unlabelled": "big",
    "semi.VAT": "micro",
    "semi.VAT-unlabelled": None,
}
# measured: the "micro" reference agrees to 2.4e-7 under every AMP mode (both sides run the same
# autocast per micro-batch); the "big" one to 1.2e-7 / 9e-5 / 6e-4 (fp32 / fp16 / bf16: autocast
# on 4 rows vs 8). A wrong reference (big for micro, one micro-batch for big) is off by >= 5.7e-4
# (micro) / 5e-3 (big).
TOL = {"micro": {None: 1e-6, "fp16": 1e-6, "bf16": 1e-6}, "big": {None: 1e-6, "fp16": 2e-4, "bf16": 1.5e-3}}
K = 2  # micro-batches per window


def _plain(name, **kw):
    """No dropout and SGD, so that accumulation is the only difference between two runs."""
    torch.manual_seed(0)
    model = TinyTextClassifier(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return model, opt, Tricks([FACTORIES[name](model, opt)], **kw)


def _accumulated(name, amp, windows):
    model, opt, tricks = _plain(name, amp=amp, accumulate=K)
    for i in range(windows):
        for mb in split_batch(make_batch(seed=i), K):
            torch.manual_seed(1000 + i)  # the trick's draws repeat in every run below
            state = tricks.step(model, opt, mb, loss_fn)
            assert torch.isfinite(state.loss)
    assert tricks.state.step == windows
    return model, opt, tricks


def _big_batch(name, amp, windows):
    model, opt, tricks = _plain(name, amp=amp)
    for i in range(windows):
        torch.manual_seed(1000 + i)
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
    return model.state_dict()


def _mean_of_micro_updates(name, amp, saved):
    """From the state after window 1, each micro-batch of window 2 alone, then the mean."""
    start = saved["model"]
    updates = []
    for mb in split_batch(make_batch(seed=1), K):
        model, opt, tricks = _plain(name, amp=amp)
        model.load_state_dict(start)
        opt.load_state_dict(saved["opt"])
        tricks.load_state_dict(copy.deepcopy(saved["tricks"]))
        torch.manual_seed(1001)
        tricks.step(model, opt, mb, loss_fn)
        updates.append({k: v - start[k] for k, v in model.state_dict().items()})
    return {k: start[k] + sum(u[k] for u in updates) / K for k in start}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_accumulation_equals_its_reference_under_amp(name, amp):
    """k accumulated micro-batches against the trick's reference (REFERENCE) under each AMP
    mode; every trick also trains (parameters change, stay finite)."""
    assert set(REFERENCE) == set(FACTORIES), "new trick: add its reference to REFERENCE"
    ref = REFERENCE[name]
    if ref == "micro":
        model, opt, tricks = _accumulated(name, amp, 1)
        saved = copy.deepcopy(
            {"model": model.state_dict(), "opt": opt.state_dict(), "tricks": tricks.state_dict()}
        )
        for mb in split_batch(make_batch(seed=1), K):
            torch.manual_seed(1001)
            tricks.step(model, opt, mb, loss_fn)
        expected = _mean_of_micro_updates(name, amp, saved)
    else:
        model, opt, tricks = _accumulated(name, amp, 2)
        expected = _big_batch(name, amp, 2) if ref == "big" else None
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    start = _plain(name)[0].state_dict()
    assert any(not torch.equal(start[k], after[k]) for k in start), "nothing was trained"
    if expected is not None:
        for k in after:
            torch.testing.assert_close(after[k], expected[k], atol=TOL[ref][amp], rtol=0, msg=k)


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


class _GradRecorder(torch.optim.SGD):
    """SGD whose ``step()`` only records the (unscaled) gradients it was given."""

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for g in self.param_groups for p in g["params"]])


@pytest.mark.parametrize("name", sorted(n for n, r in REFERENCE.items() if r is None))
@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_per_micro_batch_draws_equal_the_same_draws_one_micro_batch_at_a_time(name, amp):
    """The tricks without a reference above draw per micro-batch (lambda and partner, an
    unlabelled batch): one trick object fed the window's micro-batches one at a time
    (accumulate=1, steps recorded but not taken) makes the same draws in the same order, so
    the accumulated window must equal plain SGD on the mean of those gradients."""
    model = _accumulated(name, amp, 1)[0]
    ref, opt, _ = _plain(name)
    rec = _GradRecorder(ref.parameters(), lr=opt.param_groups[0]["lr"])
    rec.grads = []
    tricks = Tricks([FACTORIES[name](ref, rec)], amp=amp)
    for mb in split_batch(make_batch(seed=0), K):
        torch.manual_seed(1000)  # as _accumulated seeds window 0
        tricks.step(ref, rec, mb, loss_fn)
    assert len(rec.grads) == K
    with torch.no_grad():
        for p, *grads in zip(ref.parameters(), *rec.grads):
            p.sub_(rec.param_groups[0]["lr"] * sum(grads) / K)
    expected = ref.state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, expected[k], atol=1e-6, rtol=0, msg=k)
