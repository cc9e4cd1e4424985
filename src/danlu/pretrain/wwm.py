"""Chinese whole-word masking (Cui et al. 2019, https://arxiv.org/abs/1906.08101): all the
characters of a segmented word are masked together.

transformers' ``DataCollatorForLanguageModeling(whole_word_mask=True)`` groups tokens into
words by *contiguous character offsets*. Chinese has no spaces, so a raw sentence is one
"word"; joining jieba's words with spaces gives the collator the word boundaries, and a
WordPiece (BERT-style) tokenizer drops the spaces again, so the model sees the same tokens.
Nothing is re-implemented here: the masking is the collator's
(:func:`danlu.pretrain.mlm_collator` with ``whole_word=True``), this module only segments.

Example:
    >>> texts = segment_words(["我喜欢自然语言处理"])                   # doctest: +SKIP
    >>> features = mlm_features(tokenizer, texts, whole_word=True)     # doctest: +SKIP
    >>> batch = mlm_collator(tokenizer, whole_word=True, seed=0)(features)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["segment_words"]


def segment_words(texts: Sequence[str], cut: Callable[[str], list[str]] | None = None) -> list[str]:
    """Each text with its words separated by single spaces (whitespace tokens dropped).

    Args:
        texts: the raw texts.
        cut: ``cut(text) -> words``; default jieba (rjieba when installed), extra ``zh``.

    Example:
        >>> segment_words(["我喜欢自然语言处理"])
        ['我 喜欢 自然语言 处理']
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got one str: wrap it in a list")
    if cut is None:
        from danlu.data._text import zh_segmenter

        cut = zh_segmenter()
    elif not callable(cut):
        raise TypeError(f"cut must be a callable text -> list of words, got {type(cut).__name__}")
    return [" ".join(w for w in cut(t) if w.strip()) for t in texts]
