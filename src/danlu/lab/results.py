"""The lab's ``results.jsonl``: one JSON object per finished cell, append-only, one writer;
and each cell's test predictions beside it, ``preds/<cell>.npy`` (one small int array per
cell, written before its record, so a record always has its predictions).

A run killed while writing leaves a half-written last line; :func:`read_results` ignores it
(with a warning) and :func:`append_result` cuts it off before appending, so a resumed run
never glues a new record onto it. A malformed line anywhere else is an error naming the file
and line.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "read_results", "append_result", "cell_key", "validate_record", "store_record",
    "read_predictions", "predictions_path", "labels_path",
]  # fmt: skip

_NUMBER = (int, float)
# key -> (allowed types, whether None is allowed, human description)
_REQUIRED: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "task": ((str,), False, "a task name (str)"),
    "combo": ((str,), False, "a combo like 'fgm+ema' (str)"),
    "seed": ((int,), False, "an int"),
    "n_train": ((int,), True, "an int, or null for the full training pool"),
    "match": ((str,), True, "a step key (str) for step-matched base cells, else null"),
    "metrics": ((dict,), False, "a dict of test metrics, e.g. {'accuracy': 0.81}"),
    "epochs": ((list,), False, "a list of per-epoch dicts"),
    "steps": ((int,), False, "an int (optimizer steps taken)"),
    "wall_s": (_NUMBER, False, "a number (seconds)"),
    "peak_mem_mb": (_NUMBER, False, "a number (MB)"),
}
_OPTIONAL: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "steps_match": ((str,), True, "a step key (str), else null"),
    "best_epoch": ((int,), False, "an int (1-based index into epochs: the best dev epoch)"),
    "selected_epoch": ((int,), False, "an int (1-based index into epochs: the tested epoch)"),
    "dev": ((dict,), False, "a dict of dev metrics"),
    "train_s": (_NUMBER, False, "a number (seconds of augmentation and optimizer steps)"),
    "smoke": ((bool,), False, "a bool"),
    "eval_s": (_NUMBER, False, "a number (seconds of dev and test evaluation)"),
    "dev_pred_classes": ((int,), False, "an int (classes the selected model predicts on dev)"),
    "diverged": ((str,), True, "the reason the cell diverged (str), else null"),
    "danlu": ((str,), False, "a version string"),
}


def _type_ok(value: Any, types: tuple[type, ...], nullable: bool) -> bool:
    if value is None:
        return nullable
    if isinstance(value, bool) and bool not in types:  # bool is an int subclass; reject it
        return False
    return isinstance(value, types)


def validate_record(record: Any) -> None:
    """Check that ``record`` has the keys and types of the results.jsonl schema.

    Raises:
        TypeError: ``record`` is not a dict, or a key has the wrong type (names the key).
        ValueError: a required key is missing, or a metric is not a finite number.

    Example:
        >>> validate_record({"task": "t", "combo": "base", "seed": 0, "n_train": None,
        ...     "match": None, "metrics": {"accuracy": 0.8}, "epochs": [], "steps": 10,
        ...     "wall_s": 1.0, "peak_mem_mb": 100.0})
    """
    if not isinstance(record, dict):
        raise TypeError(
            f"a result record must be a dict (JSON object), got {type(record).__name__}"
        )
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise ValueError(
            f"result record is missing required key(s) {missing}; required: {list(_REQUIRED)}"
        )
    for table in (_REQUIRED, _OPTIONAL):
        for key, (types, nullable, what) in table.items():
            if key in record and not _type_ok(record[key], types, nullable):
                raise TypeError(f"result key {key!r} must be {what}, got {record[key]!r}")
    for name, value in record["metrics"].items():
        if not _type_ok(value, _NUMBER, False) or not math.isfinite(value):
            raise ValueError(f"metrics[{name!r}] must be a finite number, got {value!r}")


def cell_key(record: dict) -> tuple:
    """A cell's identity, used for resume: ``(task, combo, seed, n_train, match)``.

    Example:
        >>> cell_key({"task": "t", "combo": "base", "seed": 1, "n_train": 500, "match": None})
        ('t', 'base', 1, 500, None)
    """
    return (record["task"], record["combo"], record["seed"], record["n_train"], record.get("match"))


def read_results(path: str | os.PathLike) -> list[dict]:
    """All records of a results.jsonl file, in file order (a missing file gives ``[]``).

    A last line that does not parse (the writer was killed mid-line) is skipped with a
    warning; a bad line anywhere else raises ``ValueError`` naming ``file:line``. Blank lines
    are skipped.

    Example:
        >>> read_results("no/such/results.jsonl")
        []
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    numbered = [(i, line) for i, line in enumerate(lines, start=1) if line.strip()]
    records = []
    for pos, (lineno, line) in enumerate(numbered):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if pos == len(numbered) - 1:
                warnings.warn(
                    f"{path}:{lineno}: ignoring a half-written last line ({err.msg}); "
                    "the run was probably interrupted while writing it",
                    stacklevel=2,
                )
                break
            raise ValueError(
                f"{path}:{lineno}: not a JSON object ({err.msg}): {line[:80]!r}"
            ) from err
        try:
            validate_record(record)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}:{lineno}: {err}") from err
        records.append(record)
    return records


def _drop_partial_tail(path: Path) -> None:
    """Cut a half-written last line off ``path`` (or end a complete one with its newline)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        cut = data.rfind(b"\n") + 1
        try:
            json.loads(data[cut:])
        except json.JSONDecodeError:
            warnings.warn(
                f"{path}: dropping a half-written last line before appending: {data[cut:][:80]!r}",
                stacklevel=3,
            )
            f.truncate(cut)
        else:  # a complete record that only lacks its newline: keep it
            f.write(b"\n")


def append_result(path: str | os.PathLike, record: dict) -> None:
    """Append ``record`` as one JSON line and fsync it (the record is validated first).

    Example:
        >>> append_result("runs/snownlp/results.jsonl", record)
    """
    validate_record(record)
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    path = Path(path)
    _drop_partial_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def predictions_path(out: str | os.PathLike, record: dict) -> Path:
    """Where the test predictions of ``record``'s cell live: ``out/preds/<cell key>.npy``."""
    task, combo, seed, n_train, match = cell_key(record)
    name = f"{task}__{combo}__s{seed}__n{n_train}__m{match}".replace("/", "_").replace(":", "-")
    return Path(out) / "preds" / f"{name}.npy"


def labels_path(out: str | os.PathLike, task: str) -> Path:
    """The test labels of ``task``, written by the runner: ``out/preds/<task>__labels.npy``."""
    return Path(out) / "preds" / f"{task}__labels.npy"


def store_record(out: str | os.PathLike, record: dict) -> None:
    """Write a cell's ``test_pred`` (if any) to ``preds/`` and then its record, without
    ``test_pred``, to ``out/results.jsonl``. The record is the source of truth: a cell whose
    record is missing is run again and its predictions overwritten."""
    record = dict(record)
    preds = record.pop("test_pred", None)
    validate_record(record)
    if preds is not None:
        path = predictions_path(out, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.asarray(preds, dtype=np.int16))
        os.replace(tmp, path)
    append_result(Path(out) / "results.jsonl", record)


def read_predictions(out: str | os.PathLike, record: dict) -> np.ndarray | None:
    """The test predictions stored for ``record``'s cell, or None (older runs kept none)."""
    path = predictions_path(out, record)
    return np.load(path) if path.exists() else None
