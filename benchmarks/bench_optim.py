"""EMA update on a MiniLM-shaped BERT (22.7M params): danlu.optim.EMA vs
torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn vs a bare torch._foreach_lerp_
floor (and a textbook per-parameter Python loop for scale).

Run: .venv/bin/python benchmarks/bench_optim.py   (about 1 minute)
"""

from __future__ import annotations

import torch
from _common import compare, minilm_shaped_classifier, report, set_threads
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from danlu.optim import EMA

DECAY = 0.999


def main() -> str:
    set_threads(2)
    model = minilm_shaped_classifier()
    params = list(model.parameters())
    n_params = sum(p.numel() for p in params)

    floor_shadow = [p.detach().clone() for p in params]
    loop_shadow = [p.detach().clone() for p in params]
    ema = EMA(model, decay=DECAY)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY))
    averaged.update_parameters(model)  # its first call only copies

    @torch.no_grad()
    def floor():
        torch._foreach_lerp_(floor_shadow, params, 1.0 - DECAY)

    @torch.no_grad()
    def python_loop():
        for s, p in zip(loop_shadow, params):
            s.mul_(DECAY).add_(p, alpha=1.0 - DECAY)

    medians = compare(
        {
            "torch._foreach_lerp_ (floor)": floor,
            "danlu EMA.update()": ema.update,
            "AveragedModel + get_ema_multi_avg_fn": lambda: averaged.update_parameters(model),
            "Python loop mul_/add_": python_loop,
        },
        repeat=60,
        warmup=5,
    )
    return report(f"EMA update, {n_params / 1e6:.1f}M params, fp32, 2 threads", medians)


if __name__ == "__main__":
    main()
