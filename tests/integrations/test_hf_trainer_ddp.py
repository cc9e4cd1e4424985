"""DanluTrainer under 2-process gloo DDP equals one process on the whole batch: FGM on
4 + 4 examples, and plain accumulation 2 x (2 + 2) with Trainer's cross-rank item count."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import assert_params_close, make_batch, run_ddp

import danlu
from danlu.adversarial import FGM

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (extra 'hf'): HF integration untested"
)
pytest.importorskip("accelerate", reason="accelerate is not installed (extra 'hf')")

LR = 0.5


def tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


def train_args(out: str, per_device: int, accumulate: int):
    return transformers.TrainingArguments(
        output_dir=out, max_steps=1, report_to=[], use_cpu=True, save_strategy="no",
        per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulate,
        optim="sgd", learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=0.0, train_sampling_strategy="sequential",
        disable_tqdm=True, logging_strategy="no", seed=0,
    )


def _worker(rank: int, world: int, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world)
    )
    from danlu.integrations.transformers import DanluTrainer

    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    for name, per_device, accumulate, tricks in (
        ("fgm", 4, 1, lambda m: [FGM(m, eps=1.0)]),
        ("accumulate", 2, 2, lambda m: []),
    ):
        model = tiny_bert()
        trainer = DanluTrainer(
            model=model, args=train_args(out, per_device, accumulate), train_dataset=rows,
            tricks=tricks(model),
        )
        trainer.train()
        assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
        torch.save(model.state_dict(), os.path.join(out, f"{name}{rank}.pt"))


def test_ddp_matches_one_process_on_the_whole_batch(tmp_path):
    run_ddp(_worker, str(tmp_path))
    batch = make_batch(n=8, seq=6, vocab=50, n_classes=3)

    def loss_fn(m, b):
        out = m(**b)
        return out.loss, out.logits

    for name, tricks in (("fgm", lambda m: [FGM(m, eps=1.0)]), ("accumulate", lambda m: [])):
        ref = tiny_bert()
        opt = torch.optim.SGD(ref.parameters(), lr=LR)
        danlu.Tricks(tricks(ref)).step(ref, opt, batch, loss_fn)
        for rank in (0, 1):
            got = tiny_bert()
            got.load_state_dict(torch.load(tmp_path / f"{name}{rank}.pt", weights_only=True))
            assert_params_close(got, ref, atol=1e-6)
