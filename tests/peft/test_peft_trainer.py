"""DanluTrainer (HF Trainer) on a LoRA model with FGM in hook mode and an adapter-only EMA:
the same as the custom loop, and save_model writes the averaged adapter in peft's format."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_batch, tiny_bert

from danlu.adversarial import FGM
from danlu.optim import EMA

peft = pytest.importorskip("peft", reason="peft is not installed (extra 'peft')")
pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
pytest.importorskip("accelerate", reason="accelerate is not installed (extra 'hf')")
from _peft_models import hf_loss, lora_model, trainable  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

import danlu  # noqa: E402
from danlu.integrations.transformers import DanluTrainer  # noqa: E402

LR = 0.5


def test_trainer_lora_hook_fgm_and_adapter_ema_equal_custom_loop(tmp_path):
    batch = make_batch(n=8, seed=6)
    model = lora_model("bert")
    ref = copy.deepcopy(model)
    ema = EMA(model, decay=0.5)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, report_to=[], use_cpu=True, save_strategy="no",
        per_device_train_batch_size=4, optim="sgd", learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=0.0,
        train_sampling_strategy="sequential", disable_tqdm=True, logging_strategy="no", seed=0,
    )  # fmt: skip
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    trainer = DanluTrainer(model=model, args=args, train_dataset=rows,
                           tricks=[FGM(model, eps=0.5, mode="hook"), ema], average=ema)  # fmt: skip
    trainer.train()

    ref_ema = EMA(ref, decay=0.5)
    runner = danlu.Tricks([FGM(ref, eps=0.5, mode="hook"), ref_ema])
    opt = torch.optim.SGD(trainable(ref).values(), lr=LR)
    for half in ({k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}):
        runner.step(ref, opt, half, hf_loss)
    ref_params = dict(ref.named_parameters())
    for n, p in trainable(model).items():
        torch.testing.assert_close(p, ref_params[n], atol=1e-6, rtol=0, msg=n)
        torch.testing.assert_close(ema.shadow[n], ref_ema.shadow[n], atol=1e-6, rtol=0, msg=n)

    trainer.save_model(str(tmp_path / "adapter"))  # the EMA adapter, in peft's format
    loaded = peft.PeftModel.from_pretrained(tiny_bert(seed=0), tmp_path / "adapter")
    lora_b = [n for n in ref_ema.shadow if "lora_B" in n]
    loaded_params = dict(loaded.named_parameters())
    assert set(lora_b) <= set(loaded_params)
    for name in lora_b:
        torch.testing.assert_close(loaded_params[name], ref_ema.shadow[name], atol=1e-6, rtol=0)
    assert lora_b and not torch.allclose(ema.shadow[lora_b[0]], trainable(model)[lora_b[0]])
