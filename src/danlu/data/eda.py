"""EDA — Easy Data Augmentation (Wei & Zou 2019, https://arxiv.org/abs/1901.11196) for
Chinese and English.

Four operations, each applied to the original sentence to make one new sentence:
synonym replacement (SR), random insertion of a synonym (RI), random swap (RS) and random
deletion (RD). SR, RI and RS change ``max(1, int(alpha * n_words))`` words; RD drops each
word with probability ``p_rd``. Stop words are never replaced and never inserted from.
Punctuation and whitespace are not words: they stay in place, and Chinese output is joined
without adding spaces. All randomness comes from one seeded ``random.Random``.

Example:
    >>> eda("The movie was surprisingly good.", n_aug=4, seed=0)   # doctest: +SKIP
    ['The movie was surprisingly good.', 'The film was surprisingly good.', ...]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from typing import NamedTuple

from danlu._checks import check_int
from danlu.data._text import Lang, detect_lang, is_word, tokenize
from danlu.data.synonyms import default_source

__all__ = [
    "EDA",
    "eda",
    "eda_params",
    "EDAParams",
    "synonym_replacement",
    "random_insertion",
    "random_swap",
    "random_deletion",
    "EN_STOP_WORDS",
    "ZH_STOP_WORDS",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The stop list of the paper's script (jasonwei20/eda_nlp, code/eda.py).
EN_STOP_WORDS = _words(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his "
    "himself she her hers herself it its itself they them their theirs themselves what which "
    "who whom this that these those am is are was were be been being have has had having do "
    "does did doing a an the and but if or because as until while of at by for with about "
    "against between into through during before after above below to from up down in out on "
    "off over under again further then once here there when where why how all any both each "
    "few more most other some such no nor not only own same so than too very s t can will "
    "just don should now"
)
# Function words, pronouns, particles, negations and degree words that must not be swapped
# for a "synonym" (a compact list; pass ``stop_words=`` for a bigger one).
ZH_STOP_WORDS = _words(
    "的 了 着 过 地 得 之 所 是 在 有 和 与 及 或 或者 并 并且 而 而且 但 但是 可是 却 因为 所以 "
    "如果 虽然 即使 于是 然后 因此 那么 就 才 都 也 还 又 再 只 很 太 最 更 比较 非常 十分 不 没 "
    "没有 别 未 无 非 我 你 您 他 她 它 我们 你们 他们 她们 它们 咱们 自己 这 那 这个 那个 这些 那些 "
    "这样 那样 这里 那里 哪 哪里 什么 怎么 怎样 为什么 谁 吗 吧 呢 啊 呀 哦 嗯 哈 啦 嘛 么 "
    "把 被 让 给 对 对于 从 向 往 到 于 以 为 为了 由 跟 同 比 按 按照 一 一个 一些 个 些 "
    "上 下 中 里 要 会 能 可以 可能 应该 已经 正在 将 等 等等 其 其他 每 各 某"
)


class EDAParams(NamedTuple):
    alpha: float
    n_aug: int


_PAPER_TABLE = ((500, 0.05, 16), (2000, 0.05, 8), (5000, 0.1, 4))


def eda_params(n_train: int) -> EDAParams:
    """The EDA paper's recommended ``(alpha, n_aug)`` for a training set of ``n_train``.

    The paper's table: 500 → (0.05, 16), 2,000 → (0.05, 8), ≥ 5,000 → (0.1, 4). Below 500
    the 500 row is used. In between, ``alpha`` and ``log2(n_aug)`` are interpolated
    linearly in ``log(n_train)`` between the two neighbouring rows (``n_aug`` rounded to the
    nearest int, ``alpha`` to 3 decimals), e.g. 1,000 → (0.05, 11), 3,000 → (0.072, 6).

    Example:
        >>> eda_params(2000)
        EDAParams(alpha=0.05, n_aug=8)
    """
    if isinstance(n_train, bool) or not isinstance(n_train, int) or n_train < 1:
        raise ValueError(f"n_train must be an int >= 1 (training examples), got {n_train!r}")
    if n_train <= _PAPER_TABLE[0][0]:
        return EDAParams(_PAPER_TABLE[0][1], _PAPER_TABLE[0][2])
    for (n0, a0, k0), (n1, a1, k1) in zip(_PAPER_TABLE, _PAPER_TABLE[1:]):
        if n_train < n1:
            t = math.log(n_train / n0) / math.log(n1 / n0)
            alpha = round(a0 + t * (a1 - a0), 3)
            return EDAParams(
                alpha, round(2 ** (math.log2(k0) + t * (math.log2(k1) - math.log2(k0))))
            )
    return EDAParams(_PAPER_TABLE[-1][1], _PAPER_TABLE[-1][2])


def _positions(tokens: list[str]) -> list[int]:
    return [i for i, t in enumerate(tokens) if is_word(t)]


def _key(word: str, lang: Lang) -> str:
    return word.lower() if lang == "en" else word


def _match_case(synonym: str, word: str) -> str:
    return synonym[:1].upper() + synonym[1:] if word[:1].isupper() else synonym


def _replaceable(
    tokens: list[str],
    positions: list[int],
    lookup: Callable[[str], list[str]],
    stop_words: Collection[str],
    lang: Lang,
) -> list[tuple[str, list[str], list[int]]]:
    """Distinct non-stop words that have synonyms, in order of first appearance:
    ``(lookup key, synonyms, token positions)``; ``lookup`` never returns the key itself."""
    where: dict[str, list[int]] = {}
    for i in positions:
        key = _key(tokens[i], lang)
        if key not in stop_words:
            where.setdefault(key, []).append(i)
    found = []
    for key, places in where.items():
        synonyms = lookup(key)
        if synonyms:
            found.append((key, synonyms, places))
    return found


def synonym_replacement(
    tokens: list[str],
    n: int,
    source: Callable[[str], list[str]],
    rng: random.Random,
    stop_words: Collection[str] = EN_STOP_WORDS,
    lang: Lang = "en",
) -> list[str]:
    """Replace ``n`` distinct non-stop words (every occurrence) by a random synonym each.

    Words without synonyms are skipped, so fewer than ``n`` may change.

    Example:
        >>> synonym_replacement(["a", " ", "quick", " ", "fox"], 1,
        ...                     {"quick": ["fast"]}.get, random.Random(0))
        ['a', ' ', 'fast', ' ', 'fox']
    """
    _check_count(n)
    out = list(tokens)
    candidates = _replaceable(tokens, _positions(tokens), _safe(source), stop_words, lang)
    _replace(out, candidates, n, rng)
    return out


def _replace(out: list[str], candidates: list, n: int, rng: random.Random) -> None:
    candidates = list(candidates)
    rng.shuffle(candidates)
    for _, synonyms, places in candidates[:n]:
        synonym = rng.choice(synonyms)
        for i in places:
            out[i] = _match_case(synonym, out[i])


def random_insertion(
    tokens: list[str],
    n: int,
    source: Callable[[str], list[str]],
    rng: random.Random,
    stop_words: Collection[str] = EN_STOP_WORDS,
    lang: Lang = "en",
) -> list[str]:
    """Insert ``n`` times a random synonym of a random non-stop word of the sentence at a
    random word slot of the sentence (before one of its words, or after its last word).
    Nothing is inserted when no word has synonyms.

    Example:
        >>> random_insertion(["a", " ", "fox"], 1, {"fox": ["tod"]}.get, random.Random(0))
        ['a', ' ', 'tod', ' ', 'fox']
    """
    _check_count(n)
    positions = _positions(tokens)
    candidates = _replaceable(tokens, positions, _safe(source), stop_words, lang)
    return _insert(tokens, positions, candidates, n, rng, " " if lang == "en" else "")


def _insert(
    tokens: list[str], positions: list[int], candidates: list, n: int, rng: random.Random, sep: str
) -> list[str]:
    if not candidates or not positions:
        return list(tokens)
    before: dict[int, list[str]] = {}  # token index -> words inserted in front of it
    for _ in range(n):
        _, synonyms, _ = rng.choice(candidates)
        j = rng.randint(0, len(positions))  # j == len: after the last word
        at = positions[j] if j < len(positions) else positions[-1] + 1
        before.setdefault(at, []).append(rng.choice(synonyms))
    out: list[str] = []
    for i, tok in enumerate([*tokens, ""]):
        for word in before.get(i, ()):
            if sep and i > positions[-1]:  # after the last word: "good" -> "good fine"
                out.append(sep)
            out.append(word)
            if sep and i <= positions[-1]:
                out.append(sep)
        if tok:
            out.append(tok)
    return out


def random_swap(
    tokens: list[str], n: int, rng: random.Random, positions: list[int] | None = None
) -> list[str]:
    """Swap two random words ``n`` times (punctuation and spaces stay in place).

    Example:
        >>> random_swap(["a", " ", "b", "."], 1, random.Random(0))
        ['b', ' ', 'a', '.']
    """
    _check_count(n)
    out = list(tokens)
    positions = _positions(tokens) if positions is None else positions
    if len(positions) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(positions, 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(
    tokens: list[str], p: float, rng: random.Random, positions: list[int] | None = None
) -> list[str]:
    """Delete each word with probability ``p``, with one space next to it; if every word
    would go, one random word stays (the result is never empty when there was a word).

    Example:
        >>> random_deletion(["a", " ", "b", "."], 0.5, random.Random(1))
        ['b', '.']
    """
    _check_fraction("p", p)
    positions = _positions(tokens) if positions is None else positions
    if not positions:
        return list(tokens)
    drop = {i for i in positions if rng.random() < p}
    if len(drop) == len(positions):
        drop.discard(positions[rng.randrange(len(positions))])
    out: list[str] = []
    skip_space = False
    for i, tok in enumerate(tokens):
        if i in drop:
            if out and out[-1].isspace():
                out.pop()
            else:
                skip_space = True
            continue
        if skip_space and tok.isspace():
            skip_space = False
            continue
        skip_space = False
        out.append(tok)
    return out


def _safe(source: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    if not callable(source):
        raise TypeError(f"source must be callable as source(word) -> list[str], got {source!r}")
    return lambda key: [s for s in source(key) or () if s != key]


def _check_count(n: int) -> None:
    check_int("n", n, 0, fix="the number of words to change (EDA uses max(1, int(alpha * words)))")


def _check_fraction(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(
            f"{name} must be a number in [0, 1] (0 turns the operation off), got {value!r}"
        )
    return float(value)


def _rng(seed: int | random.Random | None) -> random.Random:
    if isinstance(seed, random.Random):
        return seed
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return random.Random(seed)
    raise TypeError(f"seed must be an int, a random.Random or None, got {seed!r}")


class EDA:
    """The four EDA operations as a reusable augmenter (the thin, stateful form of :func:`eda`).

    Args:
        alpha_sr: share of words replaced by synonyms, in [0, 1] (0 = off; paper 0.1).
        alpha_ri: share of words inserted (synonyms of sentence words), in [0, 1].
        alpha_rs: share of words swapped, in [0, 1].
        p_rd: probability of deleting each word, in [0, 1].
        n_aug: new sentences per input (>= 1; paper 9, see :func:`eda_params`); the
            operations take turns in a random order, so each makes ``n_aug / 4`` of them.
        keep_original: put the input first in ``__call__``'s output (default True).
        lang: ``"zh"``, ``"en"`` or None to detect per text (:func:`~danlu.data._text.detect_lang`).
        source: synonym source ``source(word) -> list[str]``; default Cilin for Chinese,
            WordNet for English (:mod:`danlu.data.synonyms`). Only used by SR and RI.
        stop_words: words never replaced nor inserted from; default the paper's English list
            / a compact Chinese list, by language. English words are looked up lower-cased.
        tokenizer: ``tokenizer(text) -> tokens`` that join back to ``text`` exactly
            (whitespace kept as tokens), e.g. ``jieba.lcut``; default a regex for English
            and :func:`~danlu.data._text.zh_segmenter` (rjieba if installed, else jieba).
        seed: int, ``random.Random`` or None (fresh entropy); never the global ``random``.

    Example:
        >>> aug = EDA(n_aug=4, seed=0)                  # Cilin synonyms for Chinese
        >>> aug("这部电影的剧情非常精彩")                 # doctest: +SKIP
        ['这部电影的剧情非常精彩', '这部电影的剧情非常名特优', ...]
        >>> swap_delete = EDA(alpha_sr=0, alpha_ri=0, n_aug=2)   # needs no synonym data
        >>> len(swap_delete.augment("a fine film", random.Random(1)))   # new ones only
        2
    """

    def __init__(
        self,
        alpha_sr: float = 0.1,
        alpha_ri: float = 0.1,
        alpha_rs: float = 0.1,
        p_rd: float = 0.1,
        n_aug: int = 9,
        *,
        keep_original: bool = True,
        lang: Lang | None = None,
        source: Callable[[str], list[str]] | None = None,
        stop_words: Collection[str] | None = None,
        tokenizer: Callable[[str], list[str]] | None = None,
        seed: int | random.Random | None = None,
    ) -> None:
        self.alpha_sr = _check_fraction("alpha_sr", alpha_sr)
        self.alpha_ri = _check_fraction("alpha_ri", alpha_ri)
        self.alpha_rs = _check_fraction("alpha_rs", alpha_rs)
        self.p_rd = _check_fraction("p_rd", p_rd)
        if not (self.alpha_sr or self.alpha_ri or self.alpha_rs or self.p_rd):
            raise ValueError("all four of alpha_sr, alpha_ri, alpha_rs, p_rd are 0: enable one")
        if isinstance(n_aug, bool) or not isinstance(n_aug, int) or n_aug < 1:
            raise ValueError(f"n_aug must be an int >= 1 (new sentences per input), got {n_aug!r}")
        if lang not in (None, "zh", "en"):
            raise ValueError(f"lang must be 'zh', 'en' or None (detect), got {lang!r}")
        if source is not None:
            _safe(source)
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(
                f"tokenizer must be callable as tokenizer(text) -> list[str], got {tokenizer!r}"
            )
        self.tokenizer = tokenizer
        self.n_aug, self.keep_original, self.lang = n_aug, keep_original, lang
        self.source = source
        self.stop_words = frozenset(stop_words) if stop_words is not None else None
        self.rng = _rng(seed)
        self._memo: dict[str, dict[str, list[str]]] = {}  # lang -> word -> synonyms

    def __call__(self, text: str) -> list[str]:
        """``[text] + n_aug`` new sentences (``[text]`` alone when it has no words)."""
        new = self.augment(text, self.rng)
        return [text, *new] if self.keep_original or not new else new

    def augment(self, text: str, rng: random.Random) -> list[str]:
        """The ``n_aug`` new sentences for ``text`` drawn with ``rng`` (``[]`` if no words)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}: {text!r:.80}")
        if not text or text.isspace():
            return []
        lang = self.lang or detect_lang(text)
        tokens = tokenize(text, lang) if self.tokenizer is None else self._tokenize(text)
        positions = _positions(tokens)
        if not positions:
            return []
        n_words = len(positions)
        ops = [
            name
            for name, on in (
                ("sr", self.alpha_sr),
                ("ri", self.alpha_ri),
                ("rs", self.alpha_rs),
                ("rd", self.p_rd),
            )
            if on
        ]
        rng.shuffle(ops)
        candidates = None
        out = []
        for k in range(self.n_aug):
            op = ops[k % len(ops)]
            if op in ("sr", "ri") and candidates is None:
                candidates = self._candidates(tokens, positions, lang)
            if op == "sr":
                new = list(tokens)
                _replace(new, candidates, _count(self.alpha_sr, n_words), rng)
            elif op == "ri":
                sep = " " if lang == "en" else ""
                new = _insert(
                    tokens, positions, candidates, _count(self.alpha_ri, n_words), rng, sep
                )
            elif op == "rs":
                new = random_swap(tokens, _count(self.alpha_rs, n_words), rng, positions)
            else:
                new = random_deletion(tokens, self.p_rd, rng, positions)
            out.append("".join(new))
        return out

    def _tokenize(self, text: str) -> list[str]:
        tokens = list(self.tokenizer(text))  # type: ignore[misc]
        if "".join(tokens) != text:
            raise ValueError(
                f"tokenizer={self.tokenizer!r} lost characters of {text!r:.60}: tokens must join "
                "back to the text exactly (keep whitespace as tokens, like jieba.lcut)"
            )
        return tokens

    def _candidates(self, tokens: list[str], positions: list[int], lang: Lang) -> list:
        source = self.source if self.source is not None else default_source(lang)
        memo = self._memo.setdefault(lang, {})

        def lookup(key: str) -> list[str]:  # each word asks the source once per EDA object
            found = memo.get(key)
            if found is None:
                found = memo[key] = [s for s in source(key) or () if s != key]
            return found

        stop = self.stop_words
        if stop is None:
            stop = EN_STOP_WORDS if lang == "en" else ZH_STOP_WORDS
        return _replaceable(tokens, positions, lookup, stop, lang)

    def __repr__(self) -> str:
        return (
            f"EDA(alpha_sr={self.alpha_sr}, alpha_ri={self.alpha_ri}, alpha_rs={self.alpha_rs}, "
            f"p_rd={self.p_rd}, n_aug={self.n_aug}, lang={self.lang!r})"
        )


def _count(alpha: float, n_words: int) -> int:
    return max(1, int(alpha * n_words))


def eda(
    text: str,
    alpha_sr: float = 0.1,
    alpha_ri: float = 0.1,
    alpha_rs: float = 0.1,
    p_rd: float = 0.1,
    n_aug: int = 9,
    *,
    keep_original: bool = True,
    lang: Lang | None = None,
    source: Callable[[str], list[str]] | None = None,
    stop_words: Collection[str] | None = None,
    tokenizer: Callable[[str], list[str]] | None = None,
    seed: int | random.Random | None = None,
) -> list[str]:
    """EDA on one text: ``[text]`` (if ``keep_original``) followed by ``n_aug`` new sentences.

    Arguments as in :class:`EDA`. Text without words (empty, spaces, only punctuation or
    emoji) comes back as ``[text]``. Same ``seed`` → same output.

    Example:
        >>> eda("今天天气很好，我们去公园散步吧", n_aug=2, seed=0)
        ['今天天气很好，我们去公园散步吧', ...]
    """
    aug = EDA(
        alpha_sr, alpha_ri, alpha_rs, p_rd, n_aug,
        keep_original=keep_original, lang=lang, source=source, stop_words=stop_words,
        tokenizer=tokenizer, seed=seed,
    )  # fmt: skip
    return aug(text)
