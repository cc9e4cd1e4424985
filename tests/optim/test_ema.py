"""EMA: functional core, AveragedModel equivalence, warmup, fp32 shadow, swap/restore,
every-N, buffers, the Trick under fp16 with a skipped step, DDP, state_dict."""

from __future__ import annotations

import io
import math

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from danlu import Tricks
from danlu.optim import EMA, ema_decay, ema_update_


def _train_step(model, opt, seed):
    opt.zero_grad()
    loss_fn(model, make_batch(seed=seed))[0].backward()
    opt.step()


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_functional_core_matches_textbook_formula():
    g = torch.Generator().manual_seed(0)
    shadow = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g, dtype=torch.float64)]
    params = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g, dtype=torch.float64)]
    expected = [0.9 * s + 0.1 * p for s, p in zip(shadow, params)]
    before = [p.clone() for p in params]
    ema_update_(shadow, params, 0.9)
    for s, e in zip(shadow, expected):
        torch.testing.assert_close(s, e, atol=1e-12, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(params, before))  # params untouched


def test_functional_core_fp32_shadow_of_bf16_params():
    p = torch.randn(64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    s = torch.zeros(64)
    ema_update_([s], [p], 0.75)
    torch.testing.assert_close(s, 0.25 * p.float(), atol=1e-7, rtol=0)
    assert s.dtype == torch.float32


def test_matches_averaged_model_after_50_updates():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.9)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ref.update_parameters(model)  # AveragedModel copies on its first update: do it at start
    for i in range(50):
        _train_step(model, opt, i)
        ema.update()
        ref.update_parameters(model)
    for name, p in ref.module.named_parameters():
        torch.testing.assert_close(ema.shadow[name], p.detach(), atol=1e-6, rtol=0)
    # the average really lags the trained weights (the test is not trivially true)
    assert not torch.allclose(ema.shadow["head.weight"], model.head.weight, atol=1e-3)
    assert ema.num_updates == 50 and ema.step == 50


def test_warmup_decay_hand_values():
    assert ema_decay(1, 0.999, warmup=True) == pytest.approx(2 / 11)
    assert ema_decay(9, 0.999, warmup=True) == pytest.approx(10 / 19)
    assert ema_decay(1000, 0.999, warmup=True) == pytest.approx(1001 / 1010)
    assert ema_decay(10**6, 0.999, warmup=True) == 0.999
    assert ema_decay(1, 0.999) == 0.999


def test_warmup_is_used_in_updates():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.99, warmup=True)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update()  # step 1: decay 2/11 -> shadow = 9/11
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11)
    with torch.no_grad():
        lin.weight.fill_(2.0)
    ema.update()  # step 2: decay 3/12 -> 0.25 * 9/11 + 0.75 * 2
    assert ema.shadow["weight"].item() == pytest.approx(0.25 * 9 / 11 + 1.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_keeps_fp32_shadow(dtype):
    torch.manual_seed(0)
    model = TinyTextClassifier().to(dtype)
    ema = EMA(model, decay=0.999)
    assert all(s.dtype == torch.float32 for s in ema.shadow.values())
    start = {n: s.clone() for n, s in ema.shadow.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ema.update()
    for n, p in model.named_parameters():
        expected = 0.999 * start[n] + 0.001 * p.detach().float()
        torch.testing.assert_close(ema.shadow[n], expected, atol=1e-6, rtol=0)
        # a 1e-5 move is below fp16/bf16 resolution near 1: only an fp32 shadow keeps it
    with ema.averaged():
        assert all(p.dtype == dtype for p in model.parameters())


def test_model_cast_after_construction_is_regrouped():
    lin = nn.Linear(3, 1)
    ema = EMA(lin, decay=0.5)
    start = {n: s.clone() for n, s in ema.shadow.items()}
    ema.update()
    lin.to(torch.bfloat16)  # shadow stays fp32; the params changed dtype in place
    ema.update()
    for n, p in lin.named_parameters():
        expected = 0.5 * (0.5 * start[n] + 0.5 * start[n]) + 0.5 * p.detach().float()
        torch.testing.assert_close(ema.shadow[n], expected, atol=1e-7, rtol=0)
        assert ema.shadow[n].dtype == torch.float32


def test_replaced_parameters_and_buffers_are_followed():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    model.to(torch.float64)  # BatchNorm buffers are replaced by new tensors
    model.train()
    model(torch.randn(8, 2, dtype=torch.float64))
    ema.update()
    assert torch.equal(ema.shadow_buffers["1.running_mean"], model[1].running_mean.float())
    lin = nn.Linear(2, 2)
    lin_ema = EMA(lin)
    old_weight = lin.weight
    lin.to("meta")  # a device change that replaces the Parameter objects
    assert lin.weight is not old_weight
    lin_ema.update()
    assert lin_ema.shadow["weight"].device.type == "meta"  # the shadow followed the new params
    model.append(nn.Linear(2, 2))  # updates only walk the modules known at construction;
    with pytest.raises(RuntimeError, match="create the EMA after changing the model"):
        ema.apply_to()  # swapping in the average checks the whole tree
    model2 = nn.Sequential(nn.Linear(2, 2))
    ema2 = EMA(model2)
    model2[0] = nn.Linear(2, 2)  # a replaced submodule
    with pytest.raises(RuntimeError, match="changed after the EMA was created"):
        ema2.apply_to()


def test_restore_is_bit_identical_also_after_an_exception():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.5)
    for i in range(3):
        _train_step(model, opt, i)
        ema.update()
    own = _snapshot(model)
    with ema.averaged() as m:
        assert m is model
        for n, p in model.named_parameters():
            assert torch.equal(p, ema.shadow[n])
            assert not torch.equal(p, own[n])
    assert all(torch.equal(p, own[n]) for n, p in model.named_parameters())
    with pytest.raises(KeyError), ema.averaged():
        raise KeyError("boom inside evaluation")
    assert all(torch.equal(p, own[n]) for n, p in model.named_parameters())


def test_apply_restore_misuse_raises():
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="without apply_to"):
        ema.restore()
    ema.apply_to()
    with pytest.raises(RuntimeError, match="already applied"):
        ema.apply_to()
    with pytest.raises(RuntimeError, match="restore"):
        ema.update()
    ema.restore()


def test_every_n_steps():
    lin = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        lin.weight.fill_(0.0)
    ema = EMA(lin, decay=0.5, every=3)
    expected = 0.0
    for step in range(1, 8):
        with torch.no_grad():
            lin.weight.fill_(float(step))
        updated = ema.update()
        assert updated == (step % 3 == 0)
        if step % 3 == 0:
            expected = 0.5 * expected + 0.5 * step
    assert ema.shadow["weight"].item() == pytest.approx(expected)  # 0.5*1.5 + 3 = 3.75
    assert ema.num_updates == 2


def test_buffers_are_copied_not_averaged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    model.train()
    for _ in range(3):
        model(torch.randn(16, 4) * 3 + 1)
    ema.update()
    for n, b in model.named_buffers():
        assert torch.equal(ema.shadow_buffers[n], b), n
    live_mean = model[1].running_mean.clone()
    model(torch.randn(16, 4))  # the live statistics move on
    with ema.averaged():
        assert torch.equal(model[1].running_mean, live_mean)
    assert not torch.equal(model[1].running_mean, live_mean)


def test_trick_skips_ema_on_skipped_fp16_step():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema = EMA(model, decay=0.8)
    tricks = Tricks([ema], amp="fp16")

    def inf_loss(m, b):
        loss, logits = loss_fn(m, b)
        return loss * math.inf, logits

    expected = {n: s.clone() for n, s in ema.shadow.items()}
    for i in range(5):
        st = tricks.step(model, opt, make_batch(seed=i), inf_loss if i == 2 else loss_fn)
        assert st.stepped == (i != 2)
        if st.stepped:  # hand EMA of the weights after every real step
            for n, p in model.named_parameters():
                expected[n] = 0.8 * expected[n] + 0.2 * p.detach()
    assert tricks.state.step == 4 and ema.step == 4 and ema.num_updates == 4
    for n, s in ema.shadow.items():
        torch.testing.assert_close(s, expected[n], atol=1e-6, rtol=0)


def test_state_dict_round_trip_is_bit_exact():
    def setup(seed):
        torch.manual_seed(seed)
        model = TinyTextClassifier()
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    model_a, opt_a = setup(0)
    ema_a = EMA(model_a, decay=0.9, warmup=True, every=2)
    for i in range(8):
        _train_step(model_a, opt_a, i)
        ema_a.update()

    model_b, opt_b = setup(0)
    ema_b = EMA(model_b, decay=0.9, warmup=True, every=2)
    for i in range(5):
        _train_step(model_b, opt_b, i)
        ema_b.update()
    buf = io.BytesIO()
    torch.save({"m": model_b.state_dict(), "o": opt_b.state_dict(), "e": ema_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model_c, opt_c = setup(1)
    model_c.load_state_dict(saved["m"])
    opt_c.load_state_dict(saved["o"])
    ema_c = EMA(model_c, decay=0.9, warmup=True, every=2)
    ema_c.load_state_dict(saved["e"])
    for i in range(5, 8):
        _train_step(model_c, opt_c, i)
        ema_c.update()
    assert ema_c.step == ema_a.step and ema_c.num_updates == ema_a.num_updates
    for n, s in ema_a.shadow.items():
        assert torch.equal(s, ema_c.shadow[n]), n


def test_load_state_dict_rejects_other_model():
    ema = EMA(nn.Linear(2, 2))
    other = EMA(nn.Linear(2, 3)).state_dict()
    with pytest.raises(ValueError, match="weight"):
        ema.load_state_dict(other)
    renamed = EMA(nn.Sequential(nn.Linear(2, 2))).state_dict()
    with pytest.raises(ValueError, match="missing"):
        ema.load_state_dict(renamed)


@pytest.mark.parametrize("decay", [0.0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_bad_decay(decay):
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(nn.Linear(2, 2), decay=decay)


def test_bad_inputs():
    with pytest.raises(ValueError, match="every"):
        EMA(nn.Linear(2, 2), every=0)
    with pytest.raises(ValueError, match="no parameters"):
        EMA(nn.ReLU())
    with pytest.raises(ValueError, match="2 tensors"):
        ema_update_([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], 0.9)
    with pytest.raises(TypeError, match="floating-point"):
        ema_update_([torch.zeros(1, dtype=torch.long)], [torch.zeros(1, dtype=torch.long)], 0.9)


def _ddp_ema(rank, world, out_dir):
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinyTextClassifier())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ema = EMA(model, decay=0.7)
    tricks = Tricks([ema])
    for i in range(3):
        tricks.step(model, opt, make_batch(seed=100 * rank + i), loss_fn)  # different data
    torch.save({"shadow": ema.shadow, "params": _snapshot(model.module)}, f"{out_dir}/{rank}.pt")


def test_ddp_shadow_identical_on_both_ranks(tmp_path):
    run_ddp(_ddp_ema, str(tmp_path))
    r0 = torch.load(tmp_path / "0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "1.pt", weights_only=True)
    assert set(r0["shadow"]) == set(TinyTextClassifier().state_dict())  # no "module." prefix
    for n in r0["shadow"]:
        assert torch.equal(r0["shadow"][n], r1["shadow"][n]), n
    torch.manual_seed(0)
    init = TinyTextClassifier().head.weight
    assert not torch.equal(r0["shadow"]["head.weight"], init)  # it did average something


def test_trainable_only_by_default_and_full_state_dict_without_distributed():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    model.embed.requires_grad_(False)  # a frozen embedding, as in LoRA
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ema, everything = EMA(model, decay=0.5), EMA(model, decay=0.5, trainable_only=False)
    assert "embed.weight" not in ema.shadow and "embed.weight" in everything.shadow
    start = {n: s.clone() for n, s in everything.shadow.items()}
    _train_step(model, opt, 0)
    ema.update()
    everything.update()
    for n, p in model.named_parameters():
        expected = 0.5 * start[n] + 0.5 * p.detach()  # the frozen one: its own value
        torch.testing.assert_close(everything.shadow[n], expected, atol=1e-7, rtol=0)
        if n in ema.shadow:
            assert torch.equal(ema.shadow[n], everything.shadow[n]), n
    frozen = model.embed.weight.detach().clone()
    with ema.averaged():
        assert torch.equal(model.embed.weight, frozen)  # untouched by the swap
    full = ema.full_state_dict()  # no process group: rank 0, plain CPU tensors
    assert full.keys() == ema.state_dict().keys() and full["step"] == 1
    assert all(torch.equal(full["shadow"][n], s) for n, s in ema.shadow.items())
    assert "trainable_only=True" in repr(ema)
