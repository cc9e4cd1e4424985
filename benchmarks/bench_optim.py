"""EMA update: danlu.optim.EMA vs torch.optim.swa_utils.AveragedModel + get_ema_multi_avg_fn
vs a bare torch._foreach_lerp_ floor (and a textbook per-parameter Python loop for scale).

Two models: the MiniLM-shaped BERT classifier (22.7M params: memory-bandwidth bound), and a
BERT with the same structure (same number of parameter tensors and buffers) but hidden size 8,
where the kernels cost almost nothing and the table shows each variant's fixed Python
overhead per update.

Run: .venv/bin/python benchmarks/bench_optim.py   (under a minute on a quiet machine)

The minimum table's "median ms" column (from ``_common.report``) holds the minimum. The
paired table divides each call by the floor's call in the same round, then takes the median.
The CPU-time tables (1 thread, ``time.thread_time``) leave out time spent descheduled by
other processes: on a shared, noisy machine they are the steadiest figures.
"""

from __future__ import annotations

import statistics
import time

import torch
from _common import compare, minilm_shaped_classifier, report, set_threads
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from danlu.optim import EMA

DECAY = 0.999
ROUNDS = 100


def tiny_same_structure() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=100, hidden_size=8, num_hidden_layers=6, num_attention_heads=2,
        intermediate_size=16, num_labels=2,
    )  # fmt: skip
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def variants(model: nn.Module) -> dict:
    params = list(model.parameters())
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

    return {
        "torch._foreach_lerp_ (floor)": floor,
        "danlu EMA.update()": ema.update,
        "AveragedModel + get_ema_multi_avg_fn": lambda: averaged.update_parameters(model),
        "Python loop mul_/add_": python_loop,
    }


def measure(title: str, model: nn.Module) -> str:
    fns = variants(model)
    compare(fns, repeat=1, warmup=5)
    # one interleaved call per variant per round; as in timeit, the minimum over rounds is the
    # cost with the least interference from other processes, the median the typical one
    rounds: dict[str, list[float]] = {n: [] for n in fns}
    for _ in range(ROUNDS):
        for n, t in compare(fns, repeat=1, warmup=0).items():
            rounds[n].append(t)
    n_params = sum(p.numel() for p in model.parameters())
    title = f"{title} ({n_params / 1e6:.2f}M params, fp32, 2 threads, {ROUNDS} rounds)"
    return "\n\n".join(
        [
            report(f"{title}: median", {n: statistics.median(ts) for n, ts in rounds.items()}),
            report(f"{title}: minimum", {n: min(ts) for n, ts in rounds.items()}),
            paired(title, rounds),
        ]
    )


def paired(title: str, rounds: dict[str, list[float]]) -> str:
    """Median over rounds of each variant's time divided by the floor's time *in the same
    round*: slow drifts of the machine's load cancel out of these ratios."""
    floor = next(iter(rounds.values()))
    lines = [
        f"### {title}: paired ratio to the floor",
        "",
        "| variant | median ratio |",
        "|---|---:|",
    ]
    for n, ts in rounds.items():
        lines.append(f"| {n} | {statistics.median(t / f for t, f in zip(ts, floor)):.3f} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def measure_cpu_time(title: str, model: nn.Module) -> str:
    """1 thread, CPU time of the calling thread (``time.thread_time``): time the process
    spends descheduled by other processes does not count, so this is the steadiest figure
    on a loaded machine (memory-bandwidth contention still shows)."""
    set_threads(1)
    fns = variants(model)
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {n: [] for n in fns}
    names = list(fns)
    for r in range(ROUNDS):
        for n in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order
            t0 = time.thread_time()
            fns[n]()
            times[n].append(time.thread_time() - t0)
    set_threads(2)
    medians = {n: statistics.median(ts) for n, ts in times.items()}
    return report(f"{title}: CPU time, 1 thread, median of {ROUNDS} rounds", medians)


def main() -> str:
    set_threads(2)
    big, tiny = minilm_shaped_classifier(), tiny_same_structure()
    return "\n\n".join(
        [
            measure("EMA update, MiniLM-shaped BERT", big),
            measure("EMA update overhead, same structure at hidden 8", tiny),
            measure_cpu_time("EMA update, MiniLM-shaped BERT", big),
            measure_cpu_time("EMA update overhead, same structure at hidden 8", tiny),
        ]
    )


if __name__ == "__main__":
    main()
