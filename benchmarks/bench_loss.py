"""Loss tricks: focal loss fwd+bwd vs ``F.cross_entropy`` (eager, the fused
``compile=True`` path, and two naive focal losses), the sigmoid form vs
``F.binary_cross_entropy_with_logits``, and R-Drop (both forms) vs a plain step on a
MiniLM-shaped BERT (8x128, AdamW).

Each is timed twice: wall time with 2 threads (``_common.compare``), and this thread's CPU
time with 1 thread, which stays meaningful when other jobs load the machine. The
``torch.compile`` warm-up (first call of each compiled variant) is timed separately, before
the round-robin, and printed; later sizes reuse the kernels (dynamic shapes).

    .venv/bin/python benchmarks/bench_loss.py
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from _common import compare, minilm_shaped_classifier, report, set_threads, text_batch

from danlu import Tricks
from danlu.loss import RDrop, focal_loss


def naive_focal_gather(x, t, gamma=2.0):
    """The usual hand-written focal loss: gather log p_t, then plain autograd."""
    logp = F.log_softmax(x, 1).gather(1, t[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def naive_focal_onehot(x, t, gamma=2.0):
    """Textbook full-size form: -sum_c onehot_c (1 - p_c)^gamma log p_c."""
    logp = F.log_softmax(x, 1)
    onehot = F.one_hot(t, x.shape[1]).to(x.dtype)
    return (-(onehot * (1 - logp.exp()) ** gamma * logp).sum(1)).mean()


def warm_up(losses: dict) -> None:
    """First fwd+bwd of each compiled variant (the torch.compile warm-up), timed apart."""
    for name, loss in losses.items():
        if "compile" in name:
            t0 = time.perf_counter()
            loss().backward()
            print(f"warm-up (first call) of {name}: {time.perf_counter() - t0:.2f} s", flush=True)


def bench(title: str, losses: dict, x: torch.Tensor, inner: int, cpu_time: bool) -> str:
    """fwd+bwd of each loss, ``inner`` calls per sample; ratios against the first."""
    warm_up(losses)

    def run(loss):
        def call():
            for _ in range(inner):
                loss().backward()
                x.grad = None

        return call

    variants = {name: run(loss) for name, loss in losses.items()}
    if cpu_time:
        medians = compare(variants, repeat=25, clock="cpu")
        how = "1 thread, thread CPU time"
    else:
        medians = compare(variants, repeat=25, warmup=2)
        how = "2 threads, wall time"
    return report(f"{title}, {how} ({inner} calls per sample)", medians)


def bench_focal(n: int, c: int, inner: int, cpu_time: bool = False) -> str:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).requires_grad_()
    t = torch.randint(0, c, (n,), generator=g)
    alpha = torch.rand(c, generator=g) + 0.5
    losses = {
        "F.cross_entropy": lambda: F.cross_entropy(x, t),
        "danlu focal_loss (gamma=2)": lambda: focal_loss(x, t, 2.0),
        "danlu focal_loss (gamma=2, alpha)": lambda: focal_loss(x, t, 2.0, alpha),
        "danlu focal_loss (gamma=2, compile=True)": lambda: focal_loss(x, t, 2.0, compile=True),
        "danlu focal_loss (gamma=2, alpha, compile=True)": lambda: focal_loss(
            x, t, 2.0, alpha, compile=True
        ),
        "naive focal (gather)": lambda: naive_focal_gather(x, t),
        "naive focal (one-hot)": lambda: naive_focal_onehot(x, t),
    }
    return bench(f"focal loss fwd+bwd, logits {n} x {c}", losses, x, inner, cpu_time)


def bench_sigmoid_focal(n: int, c: int, inner: int, cpu_time: bool = False) -> str:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, c, generator=g).requires_grad_()
    y = (torch.rand(n, c, generator=g) < 0.1).float()
    losses = {
        "F.binary_cross_entropy_with_logits": lambda: F.binary_cross_entropy_with_logits(x, y),
        "danlu focal_loss sigmoid (gamma=2, alpha=0.25)": lambda: focal_loss(
            x, y, 2.0, 0.25, mode="sigmoid"
        ),
        "danlu focal_loss sigmoid (gamma=2, alpha=0.25, compile=True)": lambda: focal_loss(
            x, y, 2.0, 0.25, mode="sigmoid", compile=True
        ),
    }
    return bench(f"sigmoid focal loss fwd+bwd, logits {n} x {c}", losses, x, inner, cpu_time)


def bench_rdrop(cpu_time: bool = False) -> str:
    model = minilm_shaped_classifier().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = text_batch()

    def loss_fn(m, b):
        out = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        return F.cross_entropy(out, b["labels"]), out

    def plain():
        loss_fn(model, batch)[0].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    two_pass = Tricks([RDrop(alpha=4.0)])
    duplicate = Tricks([RDrop(alpha=4.0, mode="duplicate")])
    variants = {
        "plain step": plain,
        "RDrop two_pass": lambda: two_pass.step(model, opt, batch, loss_fn),
        "RDrop duplicate": lambda: duplicate.step(model, opt, batch, loss_fn),
    }
    if cpu_time:
        medians, how = compare(variants, repeat=4, clock="cpu"), "1 thread, thread CPU time"
    else:
        medians, how = compare(variants, repeat=7, warmup=1), "2 threads, wall time"
    return report(f"R-Drop step, MiniLM-shaped BERT, 8 x 128 tokens, AdamW, {how}", medians)


def main() -> None:
    if "--focal-only" in sys.argv:
        set_threads(1)
        bench_focal(4096, 30, inner=20, cpu_time=True)
        bench_focal(32768, 50, inner=3, cpu_time=True)
        return
    set_threads(2)
    bench_focal(4096, 30, inner=20)
    bench_focal(32768, 50, inner=3)
    bench_sigmoid_focal(4096, 30, inner=20)
    set_threads(1)
    bench_focal(4096, 30, inner=20, cpu_time=True)
    bench_focal(32768, 50, inner=3, cpu_time=True)
    bench_sigmoid_focal(4096, 30, inner=20, cpu_time=True)
    set_threads(2)
    bench_rdrop()
    set_threads(1)
    bench_rdrop(cpu_time=True)


if __name__ == "__main__":
    main()
