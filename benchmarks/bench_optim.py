"""EMA update on a MiniLM-shaped BERT (22.7M params): danlu.optim.EMA vs
torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn vs a bare torch._foreach_lerp_
floor (and a textbook per-parameter Python loop for scale).

Run: .venv/bin/python benchmarks/bench_optim.py   (under a minute on a quiet machine)

The minimum table's "median ms" column (from ``_common.report``) holds the minimum.
"""

from __future__ import annotations

import statistics

import torch
from _common import compare, minilm_shaped_classifier, report, set_threads
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from danlu.optim import EMA

DECAY = 0.999
ROUNDS = 100


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

    variants = {
        "torch._foreach_lerp_ (floor)": floor,
        "danlu EMA.update()": ema.update,
        "AveragedModel + get_ema_multi_avg_fn": lambda: averaged.update_parameters(model),
        "Python loop mul_/add_": python_loop,
    }
    compare(variants, repeat=1, warmup=5)
    # one interleaved call per variant per round; as in timeit, the minimum over rounds is the
    # cost with the least interference from other processes, the median the typical one
    rounds: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(ROUNDS):
        for n, t in compare(variants, repeat=1, warmup=0).items():
            rounds[n].append(t)
    title = f"EMA update, {n_params / 1e6:.1f}M params, fp32, 2 threads, {ROUNDS} rounds"
    return "\n\n".join(
        [
            report(f"{title}: median", {n: statistics.median(ts) for n, ts in rounds.items()}),
            report(f"{title}: minimum", {n: min(ts) for n, ts in rounds.items()}),
        ]
    )


if __name__ == "__main__":
    main()
