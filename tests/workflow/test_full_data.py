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


# ----------------------------------------------------------------- incremental training
def _first_run(tmp_path):
    """6 AdamW steps under a warmup/decay schedule ending at lr 0, with an EMA; saved."""
    from danlu.full_data import save_training_state
    from danlu.optim import EMA

    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tricks = danlu.Tricks([EMA(model, decay=0.9)])
    sched = linear_warmup(opt, 1, 6)
    for batch in tensor_loader(48, 8, seed=1):
        tricks.step(model, opt, batch, tuple_loss)
        sched.step()
    assert opt.param_groups[0]["lr"] == 0.0  # the schedule ended
    save_training_state(tmp_path / "run1.pt", model, opt, tricks)
    return tmp_path / "run1.pt"


def _fresh(seed: int):
    from danlu.optim import EMA

    torch.manual_seed(seed)
    model = TinyTextClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, opt, EMA(model, decay=0.9)


def test_incremental_train_equals_a_hand_loop_from_the_checkpoint(tmp_path):
    from danlu.full_data import incremental_train

    path = _first_run(tmp_path)
    new = tensor_loader(40, 8, seed=2)  # 5 batches: 10 steps over 2 epochs

    model, opt, ema = _fresh(1)
    summaries = incremental_train(model, opt, new, tuple_loss, checkpoint=path, epochs=2,
                                  tricks=danlu.Tricks([ema]))  # fmt: skip

    # reference: load by hand, restart the schedule at the first run's peak lr (1e-2)
    ref, ref_opt, ref_ema = _fresh(2)
    saved = torch.load(path, weights_only=False)
    ref.load_state_dict(saved["model"])
    ref_opt.load_state_dict(saved["optimizer"])
    ref_ema.load_state_dict(saved["tricks"]["tricks"][0][1])
    for g in ref_opt.param_groups:
        g["lr"] = g["initial_lr"] = 1e-2
    sched = linear_warmup(ref_opt, 1, 10)
    lrs = []
    for _ in range(2):
        for ids, y in new:
            F.cross_entropy(ref(ids), y).backward()
            lrs.append(ref_opt.param_groups[0]["lr"])
            ref_opt.step()
            ref_opt.zero_grad()
            sched.step()
            ref_ema.update(step=ref_ema.step + 1)
    assert_params_close(model, ref, atol=1e-6)
    for name, s in ema.shadow.items():
        torch.testing.assert_close(s, ref_ema.shadow[name], atol=1e-6, rtol=0)
    assert ema.num_updates == ref_ema.num_updates == 16  # 6 in the first run + 10
    assert [s.steps for s in summaries] == [5, 5]
    assert summaries[0].lrs + summaries[1].lrs == pytest.approx(lrs)
    assert max(lrs) == pytest.approx(1e-2)  # the first run's peak, not its final 0
    # Adam moments continued: 6 steps of the first run + 10
    assert all(int(st["step"]) == 16 for st in opt.state.values())


def test_incremental_train_reset_optimizer_and_lr(tmp_path):
    from danlu.full_data import incremental_train

    path = _first_run(tmp_path)
    model, opt, _ = _fresh(1)
    with pytest.warns(UserWarning, match="tricks=None, so it is not used"):
        out = incremental_train(model, opt, tensor_loader(40, 8, seed=2), tuple_loss,
                                checkpoint=path, lr=3e-3, optimizer_state="reset")  # fmt: skip
    assert all(int(st["step"]) == 5 for st in opt.state.values())
    assert max(out[0].lrs) == pytest.approx(3e-3)


def test_incremental_train_errors(tmp_path):
    from danlu.full_data import incremental_train

    model, opt, _ = _fresh(0)
    data = tensor_loader(16, 8)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        incremental_train(model, opt, data, tuple_loss, epochs=0)
    with pytest.raises(ValueError, match="optimizer_state must be 'keep' or 'reset'"):
        incremental_train(model, opt, data, tuple_loss, optimizer_state="new")
    with pytest.raises(ValueError, match=r"checkpoint lacks \['optimizer', 'tricks'\]"):
        incremental_train(model, opt, data, tuple_loss, checkpoint={"model": {}})
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        incremental_train(model, lambda m: opt, data, tuple_loss)
