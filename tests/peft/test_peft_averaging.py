"""EMA / SWA / FMA on LoRA models (peft) average only the adapters (and the trainable head)
by default: against AveragedModel restricted to those parameters, adapter-only checkpoints,
frozen base shared and untouched."""

from __future__ import annotations

import pytest
import torch
from helpers import make_batch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from danlu.optim import EMA, FMA, SWA

peft = pytest.importorskip("peft", reason="peft is not installed (extra 'peft')")
pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
from _peft_models import hf_loss, lora_model, trainable  # noqa: E402


def _train(model, steps, after_step, lr=0.05, seed0=0):
    opt = torch.optim.AdamW(trainable(model).values(), lr=lr)
    for i in range(steps):
        opt.zero_grad()
        hf_loss(model, make_batch(seed=seed0 + i))[0].backward()
        opt.step()
        after_step()
    return opt


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_ema_over_adapters_equals_averaged_model_on_those_parameters(arch):
    model = lora_model(arch)
    train = trainable(model)
    assert any("lora_A" in n for n in train) and len(train) < len(dict(model.named_parameters()))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ema = EMA(model, decay=0.8)
    assert set(ema.shadow) == set(train)  # adapters + head only, no frozen base weight
    view = nn.ParameterList(train.values())  # the reference sees the trainable ones only
    ref = AveragedModel(view, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    ref.update_parameters(view)  # AveragedModel copies on its first update: do it at start

    def step():
        ema.update()
        ref.update_parameters(view)

    _train(model, 4, step)
    for name, avg in zip(train, ref.module):
        torch.testing.assert_close(ema.shadow[name], avg.detach(), atol=1e-6, rtol=0)
    lora_b = next(n for n in train if "lora_B" in n)
    assert not torch.allclose(ema.shadow[lora_b], train[lora_b], atol=1e-4)  # it lags
    with ema.averaged():
        for name, p in train.items():
            assert torch.equal(p, ema.shadow[name])
    for n, p in model.named_parameters():  # the frozen base never moved
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
    everything = EMA(model, decay=0.8, trainable_only=False)
    assert set(everything.shadow) == set(dict(model.named_parameters()))


def test_adapter_only_ema_checkpoint_round_trip(tmp_path):
    model = lora_model("bert")
    ema = EMA(model, decay=0.7)
    _train(model, 3, ema.update)
    path = tmp_path / "ema.pt"
    torch.save(ema.state_dict(), path)
    saved = torch.load(path, weights_only=True)
    assert set(saved["shadow"]) == set(trainable(model))  # adapter-sized, no base weights
    fresh = lora_model("bert")
    ema2 = EMA(fresh, decay=0.7)
    ema2.load_state_dict(saved)
    assert ema2.step == 3 and all(torch.equal(ema2.shadow[n], s) for n, s in ema.shadow.items())
    # the averaged adapter in PEFT's own format, loaded onto a fresh base
    with ema.averaged():
        model.save_pretrained(tmp_path / "adapter")
    from helpers import tiny_bert

    loaded = dict(
        peft.PeftModel.from_pretrained(tiny_bert(seed=0), tmp_path / "adapter").named_parameters()
    )
    loras = [n for n in ema.shadow if "lora_" in n]
    assert loras and set(loras) <= set(loaded)
    for name in loras:
        assert torch.equal(loaded[name], ema.shadow[name]), name
    with pytest.raises(ValueError, match="missing"):  # a whole-model EMA does not fit
        ema2.load_state_dict(EMA(fresh, trainable_only=False).state_dict())


def test_frozen_model_needs_trainable_only_false():
    lin = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable_only=False"):
        EMA(lin)
    with pytest.raises(ValueError, match="trainable_only=False"):
        SWA(lin, start_step=1)
    with pytest.raises(TypeError, match="trainable_only"):
        EMA(nn.Linear(2, 2), trainable_only="yes")
    assert len(EMA(lin, trainable_only=False).shadow) == 2


def test_swa_over_adapters_shares_the_frozen_base(tmp_path):
    model = lora_model("gpt2")
    train = trainable(model)
    swa = SWA(model, start_step=2)
    snaps = []

    def step():
        snaps.append({n: p.detach().clone() for n, p in train.items()})
        if len(snaps) >= 2:
            swa.update()

    _train(model, 4, step)
    assert swa.n_averaged == 3
    averaged = dict(swa.averaged.module.named_parameters())
    live = dict(model.named_parameters())
    for n, p in averaged.items():
        if n in train:  # the plain mean of the steps 2, 3, 4 weights
            mean = sum(s[n] for s in snaps[1:]) / 3
            torch.testing.assert_close(p.detach(), mean, atol=1e-6, rtol=0)
        else:
            assert p is live[n], n  # shared, not copied
    batch = make_batch(seed=9)
    swa.averaged(**batch)  # the averaged copy is a runnable model
    sd = swa.state_dict()
    assert {k.removeprefix("module.") for k in sd["averaged"] if k != "n_averaged"} == set(
        train
    ) | {n for n, _ in model.named_buffers()}
    swa2 = SWA(lora_model("gpt2"), start_step=2)
    swa2.load_state_dict(sd)
    assert swa2.n_averaged == 3
    for n, p in swa2.averaged.module.named_parameters():
        assert torch.equal(p, averaged[n]), n


def test_fma_over_adapters_leaves_out_the_frozen_base():
    model = lora_model("bert")
    fma = FMA(model)
    fma.snapshot()
    first = {n: p.detach().clone() for n, p in trainable(model).items()}
    _train(model, 2, lambda: None)
    fma.snapshot()
    avg = fma.average()
    assert not any(k in avg for k, p in model.named_parameters() if not p.requires_grad)
    for n, p in trainable(model).items():
        torch.testing.assert_close(avg[n], (first[n] + p.detach()) / 2, atol=1e-6, rtol=0)
    missing, unexpected = model.load_state_dict(avg, strict=False)
    assert not unexpected and all(not dict(model.named_parameters())[k].requires_grad
                                  for k in missing)  # fmt: skip
    whole = FMA(model, trainable_only=False)
    whole.snapshot()
    assert set(whole.average()) == set(model.state_dict())
