"""SWA trick against torch.optim.swa_utils used by hand; BatchNorm refresh; resume; errors."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel

from danlu import Tricks
from danlu.optim import SWA

# the by-hand reference creates SWALR mid-training, which makes torch warn needlessly
pytestmark = pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")


def _setup(seed=0):
    torch.manual_seed(seed)
    model = TinyTextClassifier()
    return model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)


def _hand_step(model, opt, seed):
    opt.zero_grad(set_to_none=True)
    loss_fn(model, make_batch(seed=seed))[0].backward()
    opt.step()


def _assert_same_average(swa: SWA, ref: AveragedModel):
    assert int(ref.n_averaged) == swa.n_averaged > 0
    for (n, a), b in zip(swa.averaged.named_parameters(), ref.parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("anneal", [0, 2])
def test_epoch_mode_matches_swa_utils_by_hand(anneal):
    model, opt = _setup()
    swa = SWA(model, opt, swa_lr=0.05, start_epoch=2, anneal=anneal)
    tricks = Tricks([swa])

    ref_model, ref_opt = _setup()
    ref = AveragedModel(ref_model)
    ref_sched = None
    for epoch in range(1, 6):
        for i in range(3):
            tricks.step(model, opt, make_batch(seed=10 * epoch + i), loss_fn)
            _hand_step(ref_model, ref_opt, 10 * epoch + i)
        tricks.epoch_end()
        if epoch >= 2:  # the torch recipe: average, then step SWALR, once per epoch
            if ref_sched is None:
                ref_sched = SWALR(ref_opt, swa_lr=0.05, anneal_epochs=anneal)
            ref.update_parameters(ref_model)
            ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    _assert_same_average(swa, ref)
    assert swa.n_averaged == 4
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_step_mode_matches_swa_utils_by_hand():
    model, opt = _setup()
    swa = SWA(model, opt, swa_lr=0.1, start_step=3, every=2, anneal=3, anneal_strategy="linear")
    tricks = Tricks([swa])
    ref_model, ref_opt = _setup()
    ref = AveragedModel(ref_model)
    ref_sched = None
    for step in range(1, 11):
        tricks.step(model, opt, make_batch(seed=step), loss_fn)
        _hand_step(ref_model, ref_opt, step)
        if step >= 3 and (step - 3) % 2 == 0:
            if ref_sched is None:
                ref_sched = SWALR(ref_opt, 0.1, anneal_epochs=3, anneal_strategy="linear")
            ref.update_parameters(ref_model)
            ref_sched.step()
        assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"], step
    _assert_same_average(swa, ref)
    assert swa.n_averaged == 4  # steps 3, 5, 7, 9


def test_swa_lr_none_leaves_the_lr_alone():
    model, opt = _setup()
    swa = SWA(model, start_step=1)
    tricks = Tricks([swa])
    for i in range(3):
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
    assert opt.param_groups[0]["lr"] == 0.5 and swa.n_averaged == 3


@pytest.mark.parametrize("anneal", [0, 3])
def test_swalr_keeps_layer_decay_ratios(anneal):
    # plain SWALR(opt, swa_lr=x) sets every group to x (checked here), erasing layer decay;
    # SWA gives each group swa_lr times its lr ratio to the largest group
    from danlu.optim import layer_decay_groups

    model, _ = _setup()
    groups = layer_decay_groups(model, lr=0.4, decay=0.5, weight_decay=0.0,
                                depth_fn=lambda n: {"embed": 0, "hidden": 1}.get(n.split(".")[0], 2))  # fmt: skip
    ratios = [g["lr_scale"] for g in groups]
    assert sorted(set(ratios)) == [0.25, 0.5, 1.0]
    plain = torch.optim.SGD(layer_decay_groups(model, lr=0.4, decay=0.5, weight_decay=0.0,
                            depth_fn=lambda n: 0 if n.startswith("embed") else 1), lr=0.4)  # fmt: skip
    SWALR(plain, swa_lr=0.1, anneal_epochs=0)
    assert {g["lr"] for g in plain.param_groups} == {0.1}  # the ratios are gone
    opt = torch.optim.SGD(groups, lr=0.4)
    swa = SWA(model, opt, swa_lr=0.1, start_step=2, anneal=anneal)
    tricks = Tricks([swa])
    for i in range(2 + anneal):
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
    for g, r in zip(opt.param_groups, ratios):  # annealed all the way: swa_lr x ratio
        assert g["lr"] == pytest.approx(0.1 * r, rel=1e-12)


def test_update_bn_recomputes_batchnorm_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    swa = SWA(model, start_step=1)
    tricks = Tricks([swa])
    xs = [torch.randn(16, 3) * 2 + 1 for _ in range(4)]

    def mse(m, x):
        return (m(x) ** 2).mean()

    for x in xs:
        tricks.step(model, opt, x, mse)
    bn = swa.averaged.module[1]
    stale = bn.running_mean.clone()
    swa.update_bn(xs)
    with torch.no_grad():  # statistics of the averaged first layer's outputs, by hand
        h = torch.cat([swa.averaged.module[0](x) for x in xs])
        batch_vars = torch.stack([swa.averaged.module[0](x).var(0, unbiased=True) for x in xs])
    torch.testing.assert_close(bn.running_mean, h.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(bn.running_var, batch_vars.mean(0), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stale, bn.running_mean)
    assert bn.momentum == 0.1  # restored after the pass


def test_state_dict_round_trip_is_bit_exact():
    def make(seed):
        model, opt = _setup(seed)
        swa = SWA(model, opt, swa_lr=0.05, start_step=2, anneal=3)
        return model, opt, swa, Tricks([swa])

    model_a, opt_a, swa_a, tricks_a = make(0)
    for i in range(8):
        tricks_a.step(model_a, opt_a, make_batch(seed=i), loss_fn)

    model_b, opt_b, swa_b, tricks_b = make(0)
    for i in range(4):
        tricks_b.step(model_b, opt_b, make_batch(seed=i), loss_fn)
    buf = io.BytesIO()
    torch.save(
        {"m": model_b.state_dict(), "o": opt_b.state_dict(), "t": tricks_b.state_dict()}, buf
    )
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model_c, opt_c, swa_c, tricks_c = make(7)
    model_c.load_state_dict(saved["m"])
    opt_c.load_state_dict(saved["o"])
    tricks_c.load_state_dict(saved["t"])
    for i in range(4, 8):
        tricks_c.step(model_c, opt_c, make_batch(seed=i), loss_fn)
    assert swa_c.n_averaged == swa_a.n_averaged == 7
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]
    for a, c in zip(swa_a.averaged.parameters(), swa_c.averaged.parameters()):
        assert torch.equal(a, c)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one"),
        ({"start_epoch": 1, "start_step": 1}, "exactly one"),
        ({"start_epoch": 0}, "start_epoch must be"),
        ({"start_step": 1.5}, "start_step must be"),
        ({"start_step": 1, "every": 0}, "every must be"),
        ({"start_step": 1, "anneal": -1}, "anneal must be"),
        ({"start_step": 1, "anneal_strategy": "exp"}, "anneal_strategy"),
        ({"start_step": 1, "swa_lr": -0.1, "optimizer": "opt"}, "swa_lr must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    model, opt = _setup()
    if kwargs.get("optimizer") == "opt":
        kwargs["optimizer"] = opt
    with pytest.raises(ValueError, match=match):
        SWA(model, **kwargs)


def test_swa_lr_needs_optimizer_and_model_needs_parameters():
    with pytest.raises(TypeError, match="needs the optimizer"):
        SWA(nn.Linear(2, 2), swa_lr=0.1, start_step=1)
    with pytest.raises(ValueError, match="no parameters"):
        SWA(nn.ReLU(), start_step=1)
