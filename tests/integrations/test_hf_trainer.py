"""danlu.integrations.transformers: DanluTrainer / TricksCallback against the custom loop.

Reference: ``danlu.Tricks`` driving the same tiny ``BertForSequenceClassification`` with the
same optimizer (SGD, constant lr, no clipping, no weight decay), batch order and seed; a
textbook FGM written here; hand-counted hook calls.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_params_close, make_batch, split_batch, tiny_bert

import danlu
from danlu.core import Order, Trick

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (extra 'hf'): HF integration untested"
)
pytest.importorskip("accelerate", reason="accelerate is not installed (extra 'hf')")
from danlu.integrations.transformers import (  # noqa: E402
    TRICKS_FILE,
    DanluTrainer,
    TricksCallback,
)

LR = 0.5


def dataset(batch: dict) -> list[dict]:
    n = batch["labels"].shape[0]
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def args(tmp_path, **kw) -> transformers.TrainingArguments:
    base = dict(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True,
        save_strategy="no", per_device_train_batch_size=8, optim="sgd", learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        train_sampling_strategy="sequential", disable_tqdm=True, logging_strategy="no", seed=0,
    )
    base.update(kw)
    return transformers.TrainingArguments(**base)


def hf_loss(model, batch):
    out = model(**batch)
    return out.loss, out.logits


def custom_loop(model, batches, tricks, accumulate=1, amp=None, lr=LR):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    runner = danlu.Tricks(tricks, accumulate=accumulate, amp=amp)
    for b in batches:
        runner.step(model, opt, b, hf_loss)
    return runner


class TextbookFGM(Trick):
    """FGM as in the papers' reference code: r = eps * g / ||g|| on the word embeddings."""

    order = Order.ADVERSARIAL

    def __init__(self, model, eps: float = 1.0) -> None:
        self.weight, self.eps = model.get_input_embeddings().weight, eps

    def after_backward(self, closure, state) -> None:
        g = self.weight.grad
        norm = g.norm()
        if norm == 0 or not torch.isfinite(norm):
            return
        backup = self.weight.data.clone()
        self.weight.data.add_(self.eps * g / norm)
        closure()
        self.weight.data.copy_(backup)


class Recorder(Trick):
    """Counts every hook call and what the state said at the time."""

    order = Order.MONITOR

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_batch(self, batch, state):
        self.calls.append(("on_batch", state.micro_step, state.is_boundary))
        return batch

    def after_backward(self, closure, state):
        self.calls.append(("after_backward", state.micro_step, float(state.loss)))

    def before_step(self, optimizer, state):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"]]
        self.calls.append(("before_step", state.step, all(g is not None for g in grads)))

    def after_step(self, optimizer, state):
        self.calls.append(("after_step", state.step, state.stepped))

    def on_epoch_end(self, state):
        self.calls.append(("on_epoch_end", state.epoch))

    def names(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


def test_fgm_first_step_matches_custom_loop(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref, plain = copy.deepcopy(model), copy.deepcopy(model)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=dataset(batch),
        tricks=[TextbookFGM(model, eps=1.0)],
    )
    trainer.train()
    custom_loop(ref, [batch], [TextbookFGM(ref, eps=1.0)])
    assert_params_close(model, ref, atol=1e-6)
    # the adversarial pass really ran: the update differs from a plain step
    custom_loop(plain, [batch], [])
    delta = (model.classifier.weight - plain.classifier.weight).abs().max()
    assert delta > 1e-4


def test_accumulation_matches_custom_loop(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3, seed=1)
    model = tiny_bert()
    ref, whole = copy.deepcopy(model), copy.deepcopy(model)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=4,
                               gradient_accumulation_steps=2),
        train_dataset=dataset(batch), tricks=[TextbookFGM(model)],
    )
    out = trainer.train()
    custom_loop(ref, split_batch(batch, 2), [TextbookFGM(ref)], accumulate=2)
    assert_params_close(model, ref, atol=1e-6)
    # without tricks, accumulation 2 x 4 equals one batch of 8 (plain HF Trainer 5.23 gives
    # twice that update for BertForSequenceClassification: its loss ignores num_items)
    plain = DanluTrainer(
        model=whole, args=args(tmp_path, per_device_train_batch_size=4,
                               gradient_accumulation_steps=2),
        train_dataset=dataset(batch),
    )
    plain.train()
    one = copy.deepcopy(tiny_bert())
    custom_loop(one, [batch], [])
    assert_params_close(whole, one, atol=1e-6)
    # the logged training loss is the mean over the window, not the sum
    with torch.no_grad():
        expected = tiny_bert()(**batch).loss.item()
    assert abs(plain.state.log_history[-1]["train_loss"] - expected) < 1e-5
    assert math.isfinite(out.training_loss)


def test_hooks_fire_in_order_and_after_step_only_on_steps(tmp_path):
    batch = make_batch(n=12, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    rec = Recorder()
    trainer = DanluTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=2,
                               gradient_accumulation_steps=2, max_steps=3),
        train_dataset=dataset(batch), tricks=[rec],
    )
    trainer.train()
    assert len(rec.names("on_batch")) == 6
    assert [c[2] for c in rec.names("on_batch")] == [False, True] * 3  # boundary every 2nd
    assert [c[1] for c in rec.names("after_backward")] == [0, 1, 2, 3, 4, 5]
    assert rec.names("before_step") == [("before_step", s, True) for s in (0, 1, 2)]
    assert rec.names("after_step") == [("after_step", s, True) for s in (1, 2, 3)]
    assert rec.names("on_epoch_end") == [("on_epoch_end", 1)]
    # each before_step comes after the two micro-batches of its window
    kinds = [c[0] for c in rec.calls if c[0] != "after_backward"]
    assert kinds[:4] == ["on_batch", "on_batch", "before_step", "after_step"]


class GradCount(Trick):
    """A stateful trick: counts optimizer steps in its state_dict."""

    order = Order.AVERAGE

    def __init__(self) -> None:
        self.seen = 0

    def after_step(self, optimizer, state):
        self.seen += 1

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state_dict):
        self.seen = state_dict["seen"]


class _Optimizer:
    """Stands in for accelerate's AcceleratedOptimizer after an fp16 overflow."""

    def __init__(self, skipped: bool) -> None:
        self.step_was_skipped, self.param_groups = skipped, []


def test_skipped_optimizer_step_runs_no_after_step():
    counter = GradCount()
    cb = TricksCallback([counter])
    cb.on_optimizer_step(None, None, None, optimizer=_Optimizer(skipped=True))
    assert counter.seen == 0 and cb.tricks.state.step == 0
    cb.on_optimizer_step(None, None, None, optimizer=_Optimizer(skipped=False))
    assert counter.seen == 1 and cb.tricks.state.step == 1


def test_compute_loss_func_is_the_innermost_loss(tmp_path):
    """A compute_loss_func still decides the loss: doubling it doubles the SGD update."""
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model, ref = tiny_bert(), tiny_bert()
    before = model.classifier.weight.detach().clone()

    def doubled(outputs, labels, num_items_in_batch=None):
        return 2.0 * F.cross_entropy(outputs.logits, labels)

    DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=dataset(batch),
        compute_loss_func=doubled, tricks=[Recorder()],
    ).train()
    custom_loop(ref, [batch], [])
    torch.testing.assert_close(
        model.classifier.weight - before, 2 * (ref.classifier.weight - before), atol=1e-6, rtol=0
    )


def test_bf16_matches_custom_loop_bf16(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref = copy.deepcopy(model)
    DanluTrainer(
        model=model, args=args(tmp_path, bf16=True), train_dataset=dataset(batch),
        tricks=[TextbookFGM(model)],
    ).train()
    custom_loop(ref, [batch], [TextbookFGM(ref)], amp="bf16")
    assert_params_close(model, ref, atol=2e-3)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_param_groups_build_the_optimizer(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref = copy.deepcopy(model)

    def groups(m):
        emb = [p for n, p in m.named_parameters() if n.startswith("bert.embeddings")]
        rest = [p for n, p in m.named_parameters() if not n.startswith("bert.embeddings")]
        return [{"params": emb, "lr": LR / 10}, {"params": rest, "lr": LR}]

    trainer = DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=dataset(batch), param_groups=groups,
    )
    trainer.train()
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [LR / 10, LR]
    opt = torch.optim.SGD(groups(ref), lr=LR)
    danlu.Tricks([]).step(ref, opt, batch, hf_loss)
    assert_params_close(model, ref, atol=1e-6)


def test_tricks_callback_refuses_backward_tricks_and_tricks_with_amp():
    with pytest.raises(ValueError, match="DanluTrainer"):
        TricksCallback([TextbookFGM(tiny_bert())])
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        TricksCallback(danlu.Tricks([], accumulate=2))
    with pytest.raises(TypeError, match="averaged"):
        DanluTrainer(model=tiny_bert(), args=None, average=object())
    with pytest.raises(TypeError, match="param_groups"):
        DanluTrainer(model=tiny_bert(), args=None, param_groups=[1])


def test_trick_state_saved_with_checkpoints_and_resumed(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    rec = Recorder()
    counter = GradCount()
    trainer = DanluTrainer(
        model=tiny_bert(), args=args(tmp_path, per_device_train_batch_size=4, max_steps=2,
                                     save_strategy="steps", save_steps=1),
        train_dataset=dataset(batch), tricks=[rec, counter],
    )
    trainer.train()
    saved = torch.load(tmp_path / "checkpoint-1" / TRICKS_FILE, weights_only=True)
    assert saved["step"] == 1 and saved["tricks"][1] == ("GradCount", {"seen": 1})
    fresh = GradCount()
    resumed = DanluTrainer(
        model=tiny_bert(), args=args(tmp_path, per_device_train_batch_size=4, max_steps=2),
        train_dataset=dataset(batch), tricks=[Recorder(), fresh],
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert fresh.seen == 2 and resumed.tricks.state.step == 2


def test_fp16_on_cpu_runs_in_fp32_as_documented(tmp_path):
    """accelerate makes neither a GradScaler nor an fp16 autocast on CPU (docs/integrations.md):
    fp16=True trains exactly like fp32 there. If this fails, accelerate changed: update the docs."""
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref = copy.deepcopy(model)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path, fp16=True), train_dataset=dataset(batch),
        tricks=[TextbookFGM(model)],
    )
    trainer.train()
    assert trainer.accelerator.scaler is None
    custom_loop(ref, [batch], [TextbookFGM(ref)])
    assert_params_close(model, ref, atol=1e-6)
