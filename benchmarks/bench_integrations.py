"""Overhead of DanluTrainer's training_step against transformers' own and against the custom
loop, on a MiniLM-shaped BERT (8 x 32 tokens, SGD so the optimizer step is cheap).

Each variant is one full micro-batch step: training_step (forward, backward, tricks) then
optimizer.step() and zero_grad(); timed round-robin in one run. Two tables per comparison:
wall time with 2 threads, and this thread's CPU time with 1 thread (robust on a loaded,
shared machine, where wall time is mostly noise).

    python benchmarks/bench_integrations.py
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch  # noqa: E402


def main() -> None:
    import torch
    from transformers import Trainer, TrainingArguments
    from transformers.utils import logging as hf_logging

    import danlu
    from danlu.adversarial import FGM
    from danlu.integrations.transformers import DanluTrainer

    hf_logging.set_verbosity_error()
    batch = text_batch(n=8, seq=32)
    out_dir = tempfile.mkdtemp(prefix="danlu_bench_")
    args = TrainingArguments(
        output_dir=out_dir, report_to=[], use_cpu=True, save_strategy="no", optim="sgd",
        learning_rate=1e-3, max_grad_norm=0.0, disable_tqdm=True,
    )

    def trainer_step(cls, extra=lambda model: {}):
        model = minilm_shaped_classifier()
        trainer = cls(model=model, args=args, **extra(model))
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1

        def step():
            trainer.training_step(model, dict(batch))
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

        return step

    def loop_step(with_fgm: bool):
        model = minilm_shaped_classifier()
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        tricks = danlu.Tricks([FGM(model)] if with_fgm else [])

        def loss_fn(m, b):
            out = m(**b)
            return out.loss, out.logits

        return lambda: tricks.step(model, opt, batch, loss_fn)

    plain = {
        "Trainer.training_step (transformers)": trainer_step(Trainer),
        "DanluTrainer, no tricks": trainer_step(DanluTrainer),
        "custom loop, danlu.Tricks([])": loop_step(False),
    }
    set_threads(2)
    report("One step, no tricks (MiniLM-shaped, 8x32, SGD), wall", compare(plain, repeat=3))
    fgm = {
        "DanluTrainer + FGM": trainer_step(DanluTrainer, lambda m: {"tricks": [FGM(m)]}),
        "custom loop + FGM": loop_step(True),
        "DanluTrainer, no tricks": plain["DanluTrainer, no tricks"],
    }
    report("One step with FGM, wall", compare(fgm, repeat=3))
    set_threads(1)
    report("One step, no tricks, CPU time (1 thread)", compare(plain, repeat=3, clock="cpu"))
    report("One step with FGM, CPU time (1 thread)", compare(fgm, repeat=3, clock="cpu"))


if __name__ == "__main__":
    main()
