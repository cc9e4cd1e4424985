"""danlu.full_data.full_data_epoch: one epoch exactly (step count under accumulation), the lr
schedule against hand-computed values, equality with a hand-written loop, and no mutation of
the loader's data."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch
from torch.utils.data import DataLoader, TensorDataset

import danlu
from danlu.full_data import EpochSummary, full_data_epoch
from danlu.optim.schedules import linear_warmup


def tensor_loader(n: int, batch_size: int, seed: int = 0) -> DataLoader:
    b = make_batch(n=n, seq=5, seed=seed)
    return DataLoader(TensorDataset(b["input_ids"], b["labels"]), batch_size=batch_size)


def tuple_loss(model, batch):
    ids, y = batch
    logits = model(ids)
    return F.cross_entropy(logits, y), logits


def count_steps(opt: torch.optim.Optimizer) -> list[list[float]]:
    """Record every group's lr at each optimizer step."""
    seen: list[list[float]] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append([g["lr"] for g in o.param_groups]))
    return seen


@pytest.mark.parametrize("n, batch_size, accumulate", [(37, 5, 1), (37, 5, 3), (40, 4, 2)])
def test_exactly_one_epoch(n, batch_size, accumulate):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    seen = count_steps(opt)
    calls = []

    def counting_loss(m, b):
        calls.append(len(b[1]))
        return tuple_loss(m, b)

    tricks = danlu.Tricks(accumulate=accumulate)
    summary = full_data_epoch(
        model, opt, tensor_loader(n, batch_size), counting_loss, lr=1e-4, tricks=tricks
    )
    n_batches = math.ceil(n / batch_size)
    expected_steps = math.ceil(n_batches / accumulate)
    assert isinstance(summary, EpochSummary)
    assert sum(calls) == n and len(calls) == n_batches == summary.micro_batches
    assert len(seen) == summary.steps == expected_steps == len(summary.lrs)
    assert tricks.state.epoch == 1 and tricks.state.step == expected_steps
    assert all(p.grad is None for p in model.parameters())  # the last window was stepped


def test_lr_schedule_by_hand():
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seen = count_steps(opt)
    peak, total, warm = 2e-3, 20, 5  # warmup=0.25 of 20 steps
    summary = full_data_epoch(model, opt, tensor_loader(40, 2), tuple_loss, lr=peak, warmup=0.25)
    expected = [
        peak * s / warm if s < warm else peak * (1 - (s - warm) / (total - warm))
        for s in range(total)
    ]
    torch.testing.assert_close(summary.lrs, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close([g[0] for g in seen], expected, rtol=1e-12, atol=0)

    cos = full_data_epoch(
        TinyTextClassifier(),
        torch.optim.SGD(TinyTextClassifier().parameters(), lr=1.0),
        tensor_loader(40, 4),
        tuple_loss,
        lr=1.0,
        warmup=0.0,
        schedule="cosine",
    )
    torch.testing.assert_close(cos.lrs, [0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])


def test_groups_keep_ratios_and_stale_initial_lr_is_replaced():
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(
        [
            {"params": model.embed.parameters(), "lr": 5e-4},
            {"params": list(model.hidden.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
    )
    old = linear_warmup(opt, warmup_steps=0, total_steps=100)  # leaves initial_lr = 5e-4, 1e-3
    for _ in range(30):
        opt.step()  # no gradients yet: changes nothing, keeps torch's step-order check quiet
        old.step()
    seen = count_steps(opt)
    full_data_epoch(model, opt, tensor_loader(16, 4), tuple_loss, lr=2e-4, warmup=0.0)
    assert seen[0] == pytest.approx([1e-4, 2e-4], rel=1e-12)  # not the old 5e-4 / 1e-3 peak
    assert [s[0] / s[1] for s in seen] == pytest.approx([0.5] * 4)


def test_matches_a_hand_written_loop():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    ref = copy.deepcopy(model)
    loader = tensor_loader(30, 6)
    full_data_epoch(
        model, torch.optim.SGD(model.parameters(), lr=1.0), loader, tuple_loss, lr=0.1, warmup=0.2
    )
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for s, (ids, y) in enumerate(loader):  # 5 steps, 1 warmup step: lrs 0, .1, .075, .05, .025
        opt.param_groups[0]["lr"] = 0.1 * (0.0 if s == 0 else 1 - (s - 1) / 4)
        F.cross_entropy(ref(ids), y).backward()
        opt.step()
        opt.zero_grad()
    assert_params_close(model, ref, atol=1e-7)


def test_loader_data_mode_and_factory():
    b = make_batch(n=12, seed=3)
    batches = [{k: v[i : i + 4] for k, v in b.items()} for i in range(0, 12, 4)]
    before = [{k: v.clone() for k, v in x.items()} for x in batches]
    model = TinyTextClassifier()
    model.eval()
    modes = []

    def mode_loss(m, batch):
        modes.append(m.training)
        return loss_fn(m, batch)

    made = []

    def factory(m):
        made.append(torch.optim.SGD(m.parameters(), lr=0.3))
        return made[-1]

    summary = full_data_epoch(model, factory, batches, mode_loss, warmup=0.0)
    assert modes == [True] * 3 and not model.training
    assert len(made) == 1 and summary.lrs == pytest.approx([0.3, 0.2, 0.1])
    for x, y in zip(batches, before):
        for k in x:
            assert torch.equal(x[k], y[k])


def test_errors():
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [make_batch(n=4)]
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        full_data_epoch(model, opt, batches, loss_fn, lr=0.0)
    with pytest.raises(ValueError, match=r"warmup must be a fraction of the epoch in \[0, 1\)"):
        full_data_epoch(model, opt, batches, loss_fn, warmup=1.0)
    with pytest.raises(TypeError, match="loader must have a length"):
        full_data_epoch(model, opt, iter(batches), loss_fn)
    with pytest.raises(ValueError, match="loader is empty"):
        full_data_epoch(model, opt, [], loss_fn)
    with pytest.raises(TypeError, match="factory must return"):
        full_data_epoch(model, lambda m: None, batches, loss_fn)
    with pytest.raises(TypeError, match="optimizer must be"):
        full_data_epoch(model, 0.1, batches, loss_fn)
    with pytest.raises(TypeError, match="tricks must be"):
        full_data_epoch(model, opt, batches, loss_fn, tricks=[])


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_one_epoch_under_amp_and_accumulation(amp):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    before = [p.detach().clone() for p in model.parameters()]
    tricks = danlu.Tricks(accumulate=2, amp=amp, max_grad_norm=1.0)
    summary = full_data_epoch(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        tensor_loader(21, 4),
        tuple_loss,
        lr=1e-3,
        tricks=tricks,
    )
    # 6 micro-batches, 3 windows; a step the fp16 GradScaler skips is neither counted nor
    # given an lr (the schedule waits for a real step)
    assert summary.micro_batches == 6 and summary.steps == tricks.state.step == len(summary.lrs)
    assert summary.steps == 3 if amp == "bf16" else 1 <= summary.steps <= 3
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_tiny_hf_bert_with_two_lr_groups():
    transformers = pytest.importorskip(
        "transformers", reason="transformers (extra 'hf') is not installed"
    )
    cfg = transformers.BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW([{"params": body, "lr": 1e-4}, {"params": head, "lr": 4e-4}])
    seen = count_steps(opt)
    head_before = [p.detach().clone() for p in head]
    batches = [make_batch(n=4, seq=6, vocab=60, seed=s) for s in range(5)]

    def hf_loss(m, b):
        out = m(**b)
        return out.loss, out.logits

    summary = full_data_epoch(model, opt, batches, hf_loss, lr=8e-5, warmup=0.0)
    assert summary.steps == 5 and math.isfinite(summary.mean_loss)
    assert seen[0] == pytest.approx([2e-5, 8e-5], rel=1e-12)  # peak group = 8e-5, ratio kept
    assert all(not torch.equal(a, b) for a, b in zip(head_before, head))
