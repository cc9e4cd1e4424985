"""Details of danlu.optim.ema the behavioural tests leave open (found by mutation testing,
see docs/mutation.md): the formulas by hand, every error, counters, dtypes and state_dict."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from danlu import State
from danlu.optim import EMA
from danlu.optim.ema import ema_decay, ema_update_


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(dtype)


def _nudge(model, value):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(value)
        model[1].running_mean.add_(value)


def test_ema_decay_formula():
    assert ema_decay(5, 0.9) == 0.9 and isinstance(ema_decay(5, 1), float)
    for step in (0, 1, 5, 30, 10_000):
        assert ema_decay(step, 0.99, warmup=True) == min(0.99, (1 + step) / (10 + step))
    assert ema_decay(0, 0.99, warmup=True) == 0.1


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, True, "0.9", None])
def test_decay_refused(bad):
    with pytest.raises(ValueError, match=rf"decay must be in \(0, 1\], got {bad!r}; typical"):
        ema_decay(1, bad)
    with pytest.raises(ValueError, match="decay must be in"):
        EMA(_model(), decay=bad)


def test_ema_update_by_hand_mixed_dtypes():
    s32, p32 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    s_wide, p_bf16 = torch.tensor([0.5, 0.25]), torch.tensor([2.0, 4.0], dtype=torch.bfloat16)
    ema_update_([s32, s_wide], [p32, p_bf16], decay=0.75)
    torch.testing.assert_close(s32, torch.tensor([0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25]))
    assert s_wide.dtype == torch.float32
    torch.testing.assert_close(s_wide, torch.tensor([0.75 * 0.5 + 0.5, 0.75 * 0.25 + 1.0]))
    with pytest.raises(ValueError, match="shadow has 1 tensors but params has 2"):
        ema_update_([s32], [p32, p32], 0.9)
    with pytest.raises(TypeError, match="floating-point tensors, got a torch.int64 shadow"):
        ema_update_([torch.zeros(2, dtype=torch.long)], [p32], 0.9)


def test_constructor_errors_and_repr():
    with pytest.raises(
        ValueError, match=r"every must be an integer >= 1 \(optimizer steps\), got 0"
    ):
        EMA(_model(), every=0)
    for bad in (True, 1.0):
        with pytest.raises(ValueError, match="every must be an integer"):
            EMA(_model(), every=bad)
    with pytest.raises(TypeError, match="trainable_only must be True or False, got 1"):
        EMA(_model(), trainable_only=1)
    with pytest.raises(ValueError, match="ReLU has no parameters: there is nothing to average"):
        EMA(nn.ReLU())
    frozen = _model().requires_grad_(False)
    with pytest.raises(ValueError, match="Sequential has no parameter with requires_grad=True"):
        EMA(frozen)
    assert set(EMA(frozen, trainable_only=False).shadow) == {
        n for n, _ in frozen.named_parameters()
    }
    ema = EMA(_model(), decay=0.5, warmup=1, every=2)
    assert ema.warmup is True
    assert repr(ema) == "EMA(decay=0.5, warmup=True, every=2, trainable_only=True)"


def test_trainable_only_tracks_requires_grad():
    model = _model()
    model[0].bias.requires_grad_(False)
    ema = EMA(model, decay=0.5)
    assert set(ema.shadow) == {"0.weight", "1.weight", "1.bias"}
    bias0 = model[0].bias.detach().clone()
    _nudge(model, 1.0)
    ema.update()
    with ema.averaged():
        torch.testing.assert_close(model[0].bias, bias0 + 1.0)  # untracked: the live value


@pytest.mark.parametrize(
    ("dtype", "shadow"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_shadow_dtype(dtype, shadow):
    ema = EMA(_model(dtype))
    assert all(s.dtype == shadow for s in ema.shadow.values())
    assert all(
        b.dtype == _model(dtype)[1].running_mean.dtype
        for k, b in ema.shadow_buffers.items()
        if "running" in k
    )


def test_update_counts_every_and_warmup_by_hand():
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.9, warmup=True, every=2)
    _nudge(model, 1.0)
    assert ema.update() is False and ema.step == 1 and ema.num_updates == 0
    assert ema.update() is True and ema.step == 2 and ema.num_updates == 1
    d = min(0.9, 3 / 12)
    for n, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[n], d * start[n] + (1 - d) * p.detach())
    torch.testing.assert_close(ema.shadow_buffers["1.running_mean"], model[1].running_mean)
    assert ema.update(step=7) is False and ema.step == 7
    assert ema.update() is True and ema.step == 8 and ema.num_updates == 2
    ema.after_step(None, State(step=10))
    assert ema.step == 10 and ema.num_updates == 3


def test_update_after_a_cast_uses_the_new_dtype():
    model = _model()
    ema = EMA(model, decay=0.5)
    ema.update()
    shadow = {n: s.clone() for n, s in ema.shadow.items()}
    model.to(torch.float64)
    _nudge(model, 1.0)
    ema.update()
    for n, p in model.named_parameters():
        assert ema.shadow[n].dtype == torch.float32
        torch.testing.assert_close(ema.shadow[n], (0.5 * shadow[n] + 0.5 * p.detach()).float())


def test_apply_restore_errors_and_exception_safety():
    model = _model()
    ema = EMA(model, decay=0.5)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    _nudge(model, 1.0)
    ema.update()
    live = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"restore\(\) without apply_to\(\)"):
        ema.restore()
    with pytest.raises(KeyError), ema.averaged() as m:
        assert m is model
        torch.testing.assert_close(model[0].weight, own["0.weight"] + 0.5)
        with pytest.raises(RuntimeError, match="already applied; call restore"):
            ema.apply_to()
        with pytest.raises(RuntimeError, match="while the averaged weights are applied"):
            ema.update()
        raise KeyError
    for k, v in model.state_dict().items():
        assert torch.equal(v, live[k]), k


def test_changed_modules_are_refused():
    model = _model()
    ema = EMA(model)
    model[0] = nn.Linear(3, 4)  # same shapes, new parameters
    with pytest.raises(
        RuntimeError,
        match=r"changed after the EMA was created \(it tracks 4 parameters and 3 buffers\)",
    ):
        ema.apply_to()
    model = _model()
    ema = EMA(model)
    model[1].bias = None  # a tracked module lost a parameter: even update() sees it
    with pytest.raises(RuntimeError, match="changed after the EMA was created"):
        ema.update()


def test_state_dict_round_trip_and_errors():
    model = _model()
    ema = EMA(model, decay=0.5)
    _nudge(model, 1.0)
    ema.update()
    ema.update()
    sd = ema.state_dict()
    assert sd.keys() == {"shadow", "buffers", "step", "num_updates"}
    assert (sd["step"], sd["num_updates"]) == (2, 2)
    full = ema.full_state_dict()
    assert full.keys() == sd.keys() and (full["step"], full["num_updates"]) == (2, 2)
    for key in ("shadow", "buffers"):
        for n, t in sd[key].items():
            assert torch.equal(full[key][n], t) and full[key][n].device.type == "cpu"
    other = EMA(_model(), decay=0.5)
    other.load_state_dict({**sd, "step": torch.tensor(2), "num_updates": 2.0})
    assert other.step == 2 and type(other.step) is int and type(other.num_updates) is int
    for n, t in sd["shadow"].items():
        assert torch.equal(other.shadow[n], t)
    for n, t in sd["buffers"].items():
        assert torch.equal(other.shadow_buffers[n], t)
    bad = {**sd, "shadow": {k: v for k, v in sd["shadow"].items() if k != "0.bias"} | {"x": 1}}
    with pytest.raises(ValueError, match=r"shadow missing \['0.bias'\], unexpected \['x'\]"):
        other.load_state_dict(bad)
    bad = {**sd, "buffers": {**sd["buffers"], "1.running_var": torch.zeros(5)}}
    with pytest.raises(ValueError, match=r"1.running_var has shape \(5,\), the model has \(4,\)"):
        other.load_state_dict(bad)


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_messages_in_full():
    decay = (
        "decay must be in (0, 1], got 2; typical values are 0.99-0.9999 (closer to 1 averages "
        "over more steps: about 1/(1-decay))"
    )
    with pytest.raises(ValueError, match=_exact(decay)):
        EMA(_model(), decay=2)
    frozen = (
        "Sequential has no parameter with requires_grad=True, so trainable_only=True leaves "
        "nothing to average: unfreeze what you train before creating the EMA, or pass "
        "trainable_only=False"
    )
    with pytest.raises(ValueError, match=_exact(frozen)):
        EMA(_model().requires_grad_(False))
    model = _model()
    ema = EMA(model)
    model[0] = nn.Linear(3, 4)
    changed = (
        "the modules of Sequential changed after the EMA was created (it tracks 4 parameters "
        "and 3 buffers): create the EMA after changing the model"
    )
    with pytest.raises(RuntimeError, match=_exact(changed)):
        ema.apply_to()


def test_shared_parameter_is_averaged_once():
    model = _model()
    model.append(nn.Linear(4, 3))
    model.append(nn.Linear(3, 4))
    model[3].weight = model[0].weight  # tied: one parameter in two modules
    ema = EMA(model, decay=0.5)
    assert len(ema.shadow) == len(dict(model.named_parameters()))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _nudge(model, 1.0)
    ema.update()
    for n, p in model.named_parameters():
        torch.testing.assert_close(ema.shadow[n], 0.5 * start[n] + 0.5 * p.detach())
    with ema.averaged():
        torch.testing.assert_close(model[3].weight, start["0.weight"] + 0.5)


@pytest.fixture
def one_rank_group(tmp_path):
    """A gloo process group of world size 1 in this process (FSDP2 needs one)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fsdp2_shards_on_one_rank(one_rank_group):
    """FSDP2 on a world of one: the shadow is a DTensor, averaged shard-wise by the hand
    formula, gathered to plain CPU tensors by full_state_dict and loaded back from them."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    for m in model:
        fully_shard(m)
    fully_shard(model)
    ema = EMA(model, decay=0.5)
    assert len(ema._fsdp) == 3 and all(hasattr(s, "full_tensor") for s in ema.shadow.values())
    start = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    assert ema.update()
    for n, p in model.named_parameters():
        expected = 0.5 * start[n] + 0.5 * p.full_tensor()
        torch.testing.assert_close(ema.shadow[n].full_tensor(), expected)
    sd = ema.full_state_dict()
    assert sd["step"] == 1 and sd["num_updates"] == 1
    for n, t in sd["shadow"].items():
        assert type(t) is torch.Tensor and torch.equal(t, ema.shadow[n].full_tensor())
    fresh = EMA(model, decay=0.5)
    fresh.load_state_dict(sd)
    for n, s in fresh.shadow.items():
        assert hasattr(s, "full_tensor") and torch.equal(s.full_tensor(), sd["shadow"][n])
    live = {n: p.full_tensor().clone() for n, p in model.named_parameters()}
    with fresh.averaged():
        for n, p in model.named_parameters():
            assert torch.equal(p.full_tensor(), sd["shadow"][n])
    for n, p in model.named_parameters():
        assert torch.equal(p.full_tensor(), live[n])
