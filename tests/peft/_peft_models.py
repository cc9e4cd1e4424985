"""Tiny BERT / GPT-2 classifiers wrapped by ``peft.get_peft_model`` with LoRA, for the PEFT
tests (import after ``pytest.importorskip("peft")``)."""

from __future__ import annotations

import torch
from helpers import tiny_bert, tiny_gpt2

# the attention projections LoRA adapts in each architecture (GPT-2's Conv1D is fan-in x out)
LORA_TARGETS = {"bert": (["query", "value"], False), "gpt2": (["c_attn"], True)}


def lora_model(arch: str, seed: int = 0, **overrides):
    """A tiny ``arch`` ("bert" or "gpt2") sequence classifier with LoRA (r=4) on its attention
    and a trainable classifier head (``task_type="SEQ_CLS"``); the base is frozen. LoRA B is
    made non-zero so the adapters change the output from the first step."""
    import peft

    base = (tiny_bert if arch == "bert" else tiny_gpt2)(seed=seed, **overrides)
    targets, fan_in_fan_out = LORA_TARGETS[arch]
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0,
                          task_type="SEQ_CLS", fan_in_fan_out=fan_in_fan_out)  # fmt: skip
    model = peft.get_peft_model(base, cfg)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


def hf_loss(model, batch):
    out = model(**batch)
    return out.loss, out.logits


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
