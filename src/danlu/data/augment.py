"""Expand a whole training set with any text augmenter (EDA, an nlpaug wrapper, your own).

An augmenter is anything with ``augment(text, rng) -> list[str]`` returning new texts only.
Each example gets its own ``random.Random`` seeded from ``(seed, index)``, so the result is
the same with 1 or 8 worker processes.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Hashable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

from danlu._checks import check_texts

__all__ = ["Augmenter", "AugmentedSet", "augment", "example_rng"]


@runtime_checkable
class Augmenter(Protocol):
    """``augment(text, rng)`` → new versions of ``text`` (without ``text`` itself), with all
    randomness drawn from ``rng``."""

    def augment(self, text: str, rng: random.Random) -> list[str]: ...


class AugmentedSet(NamedTuple):
    """The expanded set; ``source[i]`` is the index of the original example of ``texts[i]``
    (keep augmented copies in the fold of their original when cross-validating)."""

    texts: list[str]
    labels: list[Any] | None
    source: list[int]


def example_rng(seed: Hashable, index: int) -> random.Random:
    """The generator for example ``index``: independent of the worker and of the order."""
    return random.Random(f"{seed}:{index}")


def _augment_chunk(augmenter: Augmenter, task: tuple[int, list[str], Hashable]) -> list[list[str]]:
    start, texts, seed = task
    return [augmenter.augment(t, example_rng(seed, start + k)) for k, t in enumerate(texts)]


_worker_augmenter: list[Augmenter] = []  # set once per worker process by the pool initializer


def _init_worker(augmenter: Augmenter) -> None:
    _worker_augmenter[:] = [augmenter]


def _worker_chunk(task: tuple[int, list[str], Hashable]) -> list[list[str]]:
    return _augment_chunk(_worker_augmenter[0], task)


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="augment", unit="text")
        except ImportError:  # tqdm is optional: no bar without it
            pass
    return None


def augment(
    texts: Sequence[str],
    labels: Sequence[Any] | None,
    augmenter: Augmenter,
    *,
    seed: Hashable = 0,
    workers: int = 1,
    progress: bool = True,
    chunk_size: int = 256,
) -> AugmentedSet:
    """Expand ``texts`` (and ``labels``) with ``augmenter``: every original is kept, followed
    by its new versions with the same label; a new text equal to any original or to an
    earlier new text is dropped.

    Args:
        texts: the training texts (str).
        labels: one label per text, or None.
        augmenter: e.g. ``EDA(...)`` or ``NlpaugAugmenter(...)``.
        seed: base seed; example ``i`` uses :func:`example_rng` ``(seed, i)``.
        workers: processes (>= 1). Worth it from a few thousand texts; results do not depend
            on it. The augmenter runs once on ``texts[0]`` first, so that lazily loaded data
            (jieba, synonym tables) is shared by forked workers, then goes to each worker once
            (under the ``spawn`` start method it must be picklable: no lambda sources).
        progress: tqdm progress bar when tqdm is installed.
        chunk_size: texts per task sent to a worker.

    Example:
        >>> from danlu.data.eda import EDA
        >>> swap_delete = EDA(alpha_sr=0, alpha_ri=0, n_aug=4)   # no synonym data needed
        >>> aug = augment(["a fine film", "dull"], [1, 0], swap_delete, seed=0, progress=False)
        >>> aug.texts[0], aug.labels[0], aug.source[:3]
        ('a fine film', 1, [0, 0, 0])
    """
    check_texts("texts", texts)
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}: {t!r:.80}")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(
            f"labels has {len(labels)} items but texts has {len(texts)}: pass one label per text"
        )
    if not callable(getattr(augmenter, "augment", None)):
        raise TypeError(f"augmenter must have augment(text, rng) -> list[str], got {augmenter!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")

    tasks = [(s, texts[s : s + chunk_size], seed) for s in range(0, len(texts), chunk_size)]
    bar = _progress(len(texts), progress)
    try:
        if workers == 1 or len(tasks) <= 1:
            new = _collect((_augment_chunk(augmenter, t) for t in tasks), bar)
        else:
            augmenter.augment(texts[0], random.Random(0))  # load lazy data before the fork
            with multiprocessing.get_context().Pool(
                min(workers, len(tasks)), initializer=_init_worker, initargs=(augmenter,)
            ) as pool:
                new = _collect(pool.imap(_worker_chunk, tasks), bar)
    finally:
        if bar is not None:
            bar.close()

    out_texts: list[str] = []
    out_labels: list[Any] = []
    source: list[int] = []
    seen = set(texts)
    for i, (text, variants) in enumerate(zip(texts, new)):
        out_texts.append(text)
        source.append(i)
        for v in variants:
            if v not in seen:
                seen.add(v)
                out_texts.append(v)
                source.append(i)
    if labels is not None:
        labels = list(labels)
        out_labels = [labels[i] for i in source]
    return AugmentedSet(out_texts, out_labels if labels is not None else None, source)


def _collect(chunks, bar) -> list[list[str]]:
    out: list[list[str]] = []
    for chunk in chunks:
        out.extend(chunk)
        if bar is not None:
            bar.update(len(chunk))
    return out
