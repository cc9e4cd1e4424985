"""Any ``nlpaug`` augmenter behind danlu's augmenter interface (``augment(text, rng)``).

nlpaug draws from the global ``random`` and ``numpy.random`` states. The adapter seeds both
from the given ``rng`` for the call and puts the previous global states back afterwards, so
results are reproducible per example and the caller's global random state is untouched
(not thread-safe: do not share one adapter between threads).

nlpaug itself is imported only by :meth:`NlpaugAugmenter.create` (3–5 s: it imports
transformers); wrapping an augmenter you built needs no import here.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import numpy as np

from danlu._optional import require

__all__ = ["NlpaugAugmenter"]


class NlpaugAugmenter:
    """Wrap an nlpaug augmenter (e.g. ``RandomWordAug``, ``KeyboardAug``, ``SpellingAug``).

    Args:
        aug: an nlpaug augmenter (anything with ``augment(text, n=...) -> list[str]``).
        n_aug: new texts per input (>= 1); nlpaug may return fewer (it drops duplicates).
        keep_original: put the input first in ``__call__``'s output (default True).
        seed: int, ``random.Random`` or None for ``__call__``.

    Example:
        >>> swap = NlpaugAugmenter.create("word", "RandomWordAug", action="swap", n_aug=2)
        >>> swap("the film is a quiet triumph")     # ['the film is a quiet triumph', ...]
        >>> augment(texts, labels, swap, workers=2)  # danlu.data.augment.augment
    """

    def __init__(
        self,
        aug: Any,
        n_aug: int = 1,
        *,
        keep_original: bool = True,
        seed: int | random.Random | None = None,
    ) -> None:
        if not callable(getattr(aug, "augment", None)):
            raise TypeError(
                f"aug must be an nlpaug augmenter with augment(text, n=...), got {aug!r}"
            )
        if isinstance(n_aug, bool) or not isinstance(n_aug, int) or n_aug < 1:
            raise ValueError(f"n_aug must be an int >= 1 (new texts per input), got {n_aug!r}")
        self.aug, self.n_aug, self.keep_original = aug, n_aug, keep_original
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)

    @classmethod
    def create(
        cls,
        kind: Literal["char", "word", "sentence"],
        name: str,
        n_aug: int = 1,
        *,
        seed: int | random.Random | None = None,
        **kwargs: Any,
    ) -> NlpaugAugmenter:
        """Build ``nlpaug.augmenter.<kind>.<name>(**kwargs)`` and wrap it.

        Example:
            >>> NlpaugAugmenter.create("char", "KeyboardAug", aug_char_max=2)
        """
        if kind not in ("char", "word", "sentence"):
            raise ValueError(f"kind must be 'char', 'word' or 'sentence', got {kind!r}")
        module = require(f"nlpaug.augmenter.{kind}", "en", "nlpaug augmenters")
        if not hasattr(module, name):
            raise ValueError(f"nlpaug.augmenter.{kind} has no augmenter {name!r}")
        return cls(getattr(module, name)(**kwargs), n_aug, seed=seed)

    def augment(self, text: str, rng: random.Random) -> list[str]:
        """Up to ``n_aug`` new texts drawn with ``rng`` (``[]`` for empty / blank text)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r:.80}")
        if not text.strip():
            return []
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(rng.getrandbits(64))
            np.random.seed(rng.getrandbits(32))
            out = self.aug.augment(text, n=self.n_aug)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        return [out] if isinstance(out, str) else list(out)

    def __call__(self, text: str) -> list[str]:
        new = self.augment(text, self.rng)
        return [text, *new] if self.keep_original or not new else new

    def __repr__(self) -> str:
        return f"NlpaugAugmenter({self.aug!r}, n_aug={self.n_aug})"
