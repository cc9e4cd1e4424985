"""DanluTrainer with danlu's own tricks (FGM, PGD, AWP, R-Drop, EMA, SWA, layer decay, focal)
against the same tricks driven by ``danlu.Tricks`` in a hand-written loop on the same
batches."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import assert_params_close, make_batch, tiny_bert

import danlu
from danlu.adversarial import AWP, FGM, PGD
from danlu.loss import Focal, RDrop
from danlu.optim import EMA, SWA, layer_decay_groups

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (extra 'hf'): HF integration untested"
)
pytest.importorskip("accelerate", reason="accelerate is not installed (extra 'hf')")
from danlu.integrations.transformers import (  # noqa: E402
    TRICKS_FILE,
    DanluTrainer,
    TricksCallback,
    averaged_weights,
)

LR = 0.5


def rows(batch: dict) -> list[dict]:
    return [{k: v[i] for k, v in batch.items()} for i in range(batch["labels"].shape[0])]


def chunks(batch: dict, size: int) -> list[dict]:
    n = batch["labels"].shape[0]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


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


def custom_loop(model, batches, tricks, opt=None):
    opt = opt or torch.optim.SGD(model.parameters(), lr=LR)
    runner = danlu.Tricks(tricks)
    for b in batches:
        runner.step(model, opt, b, hf_loss)
    return runner


def test_fgm_first_step_matches_custom_loop(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref, plain = copy.deepcopy(model), copy.deepcopy(model)
    DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=rows(batch), tricks=[FGM(model, eps=1.0)]
    ).train()
    custom_loop(ref, [batch], [FGM(ref, eps=1.0)])
    assert_params_close(model, ref, atol=1e-6)
    custom_loop(plain, [batch], [])
    assert (model.classifier.weight - plain.classifier.weight).abs().max() > 1e-4


def test_ema_evaluated_and_saved_equals_custom_loop_ema(tmp_path):
    batch = make_batch(n=12, seq=6, vocab=50, n_classes=3, seed=2)
    dev = make_batch(n=6, seq=6, vocab=50, n_classes=3, seed=3)
    model = tiny_bert()
    ref = copy.deepcopy(model)
    ema = EMA(model, decay=0.5)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=4, max_steps=3,
                               per_device_eval_batch_size=6),
        train_dataset=rows(batch), eval_dataset=rows(dev),
        tricks=[FGM(model), ema], average=ema,
    )
    trainer.train()
    ref_ema = EMA(ref, decay=0.5)
    custom_loop(ref, chunks(batch, 4), [FGM(ref), ref_ema])
    assert ema.num_updates == ref_ema.num_updates == 3
    assert_params_close(model, ref, atol=1e-6)  # live weights

    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "final"))
    assert_params_close(model, ref, atol=1e-6)  # live weights are back after eval and save
    saved = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "final")
    with ref_ema.averaged(), torch.no_grad():
        assert_params_close(saved, ref, atol=1e-6)
        assert abs(metrics["eval_loss"] - ref(**dev).loss.item()) < 1e-5
        averaged_loss = ref(**dev).loss.item()
    with torch.no_grad():
        assert abs(ref(**dev).loss.item() - averaged_loss) > 1e-4  # EMA really differs


def test_step_level_callback_in_plain_trainer_equals_custom_loop(tmp_path):
    batch = make_batch(n=12, seq=6, vocab=50, n_classes=3, seed=4)
    model = tiny_bert()
    ref = copy.deepcopy(model)
    ema = EMA(model, decay=0.7)
    transformers.Trainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=4, max_steps=3),
        train_dataset=rows(batch), callbacks=[TricksCallback([ema])],
    ).train()
    ref_ema = EMA(ref, decay=0.7)
    custom_loop(ref, chunks(batch, 4), [ref_ema])
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, ref_ema.shadow[name], atol=1e-6, rtol=0)


def test_swa_average_is_used_for_evaluation(tmp_path):
    batch = make_batch(n=12, seq=6, vocab=50, n_classes=3, seed=5)
    model = tiny_bert()
    snapshots = []

    class Snapshot(danlu.Trick):
        order = danlu.Order.AVERAGE + 1

        def after_step(self, optimizer, state):
            snapshots.append({k: v.detach().clone() for k, v in model.named_parameters()})

    swa = SWA(model, start_step=1)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=4, max_steps=3),
        train_dataset=rows(batch), tricks=[swa, Snapshot()], average=swa,
    )
    trainer.train()
    live = {k: v.detach().clone() for k, v in model.named_parameters()}
    with averaged_weights(swa, model):
        for name, p in model.named_parameters():
            mean = torch.stack([s[name] for s in snapshots]).mean(0)
            torch.testing.assert_close(p, mean, atol=1e-6, rtol=0)
    for name, p in model.named_parameters():
        assert torch.equal(p, live[name])


def test_layer_decay_groups_match_custom_loop(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    model = tiny_bert()
    ref = copy.deepcopy(model)
    trainer = DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=rows(batch),
        param_groups=lambda m: layer_decay_groups(m, lr=LR, decay=0.5, weight_decay=0.0),
        tricks=[FGM(model)],
    )
    trainer.train()
    lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
    assert lrs == [LR * 0.125, LR * 0.25, LR * 0.5, LR]  # embeddings, 2 layers, head
    opt = torch.optim.SGD(layer_decay_groups(ref, lr=LR, decay=0.5, weight_decay=0.0), lr=LR)
    custom_loop(ref, [batch], [FGM(ref)], opt=opt)
    assert_params_close(model, ref, atol=1e-6)


def test_focal_loss_swap_matches_custom_loop(tmp_path):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3, seed=6)
    model = tiny_bert()
    ref, plain = copy.deepcopy(model), copy.deepcopy(model)
    DanluTrainer(
        model=model, args=args(tmp_path), train_dataset=rows(batch), tricks=[Focal(gamma=2.0)]
    ).train()
    custom_loop(ref, [batch], [Focal(gamma=2.0)])
    assert_params_close(model, ref, atol=1e-6)
    custom_loop(plain, [batch], [])
    assert (model.classifier.weight - plain.classifier.weight).abs().max() > 1e-4


class Reseed(danlu.Trick):
    """Pins the dropout masks: the same seed per micro-batch in both loops."""

    order = danlu.Order.DATA

    def on_batch(self, batch, state):
        torch.manual_seed(1000 + state.micro_step)
        return batch


def dropout_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1,
    )
    return transformers.BertForSequenceClassification(cfg)


@pytest.mark.parametrize("attack", ["pgd", "awp"])
def test_rdrop_with_pgd_or_awp_and_accumulation_match_custom_loop(tmp_path, attack):
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3, seed=7)
    model = dropout_bert()
    ref = copy.deepcopy(model)

    def tricks(m):
        adv = PGD(m, eps=1.0, alpha=0.3, steps=2) if attack == "pgd" else AWP(m, adv_lr=0.5)
        return [Reseed(), RDrop(alpha=2.0), adv]

    DanluTrainer(
        model=model, args=args(tmp_path, per_device_train_batch_size=4,
                               gradient_accumulation_steps=2),
        train_dataset=rows(batch), tricks=tricks(model),
    ).train()
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    runner = danlu.Tricks(tricks(ref), accumulate=2)
    for b in chunks(batch, 4):
        runner.step(ref, opt, b, hf_loss)
    assert_params_close(model, ref, atol=1e-6)


def test_load_best_model_at_end_restores_that_checkpoints_ema(tmp_path):
    batch = make_batch(n=12, seq=6, vocab=50, n_classes=3, seed=8)
    dev = make_batch(n=6, seq=6, vocab=50, n_classes=3, seed=9)
    model = tiny_bert()
    ema = EMA(model, decay=0.5)
    trainer = DanluTrainer(
        model=model,
        args=args(tmp_path, per_device_train_batch_size=4, max_steps=3, learning_rate=3.0,
                  eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1,
                  load_best_model_at_end=True, metric_for_best_model="loss"),
        train_dataset=rows(batch), eval_dataset=rows(dev), tricks=[ema], average=ema,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert not best.endswith("checkpoint-3"), "the test needs a best checkpoint before the end"
    saved = torch.load(f"{best}/{TRICKS_FILE}", weights_only=True)["tricks"][0][1]
    assert ema.step == saved["step"]
    for name, shadow in ema.shadow.items():
        assert torch.equal(shadow, saved["shadow"][name])
    with torch.no_grad(), ema.averaged():
        assert abs(model(**dev).loss.item() - trainer.state.best_metric) < 1e-5
