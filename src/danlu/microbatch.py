"""Fit-to-memory micro-batching: find the largest micro-batch that fits on the device for a
target effective batch, and the ``accumulate`` that keeps the effective batch (and so the
update) the same.

"Batch size 16 already blew my 8 GB card": try the micro-batch sizes that divide the target
batch, largest first; an out-of-memory error frees the cache and backs off to the next
smaller size. Equal micro-batches of ``target // accumulate`` examples make gradient
accumulation in :class:`danlu.Tricks` give the big-batch update exactly (mean-reduced loss).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

__all__ = ["MicroBatch", "find_micro_batch", "is_oom", "split_batch"]


def is_oom(error: BaseException) -> bool:
    """Whether ``error`` is a device out-of-memory error: CUDA's ``torch.OutOfMemoryError``,
    the RuntimeError that MPS / XPU / older torch raise with "out of memory", or the CPU
    allocator's "can't allocate memory"."""
    oom_type = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    message = str(error).lower()
    return isinstance(error, oom_type) or (
        isinstance(error, RuntimeError)
        and ("out of memory" in message or "can't allocate memory" in message)
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and torch.backends.mps.is_available():
        mps.empty_cache()


class MicroBatch(NamedTuple):
    """The micro-batch ``size``, the ``accumulate`` to pass to ``danlu.Tricks`` (``size *
    accumulate == target``) and the sizes that ran out of memory."""

    size: int
    accumulate: int
    failed: tuple[int, ...]


def find_micro_batch(
    try_step: Callable[[int], Any], target: int, max_size: int | None = None
) -> MicroBatch:
    """The largest divisor of ``target`` for which ``try_step(size)`` does not run out of
    memory.

    ``try_step(size)`` should run what training runs on one micro-batch of ``size`` examples
    of your *longest* length: forward, backward (and, to be safe, one optimizer step, since
    AdamW's state is allocated there), then zero the gradients. The sizes are tried
    largest first; on an out-of-memory error (:func:`is_oom`) the cache is freed and the next
    smaller divisor is tried. Any other error is raised.

    Args:
        try_step: runs one micro-batch of the given size.
        target: the effective batch size you want (>= 1).
        max_size: try no micro-batch larger than this (default ``target``).

    Returns:
        a :class:`MicroBatch`; use ``Tricks(accumulate=mb.accumulate)`` and micro-batches
        of ``mb.size`` examples (:func:`split_batch`).

    Raises:
        RuntimeError: when even a micro-batch of 1 runs out of memory.

    Example:
        >>> def try_step(size):               # pretend more than 8 examples do not fit
        ...     if size > 8:
        ...         raise torch.OutOfMemoryError("CUDA out of memory")
        >>> find_micro_batch(try_step, target=32)
        MicroBatch(size=8, accumulate=4, failed=(32, 16))
    """
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise ValueError(f"target must be an integer >= 1 (the effective batch), got {target!r}")
    if max_size is not None and (
        isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
    ):
        raise ValueError(f"max_size must be an integer >= 1 or None, got {max_size!r}")
    limit = target if max_size is None else min(target, max_size)
    failed = []
    for size in (s for s in range(limit, 0, -1) if target % s == 0):
        try:
            try_step(size)
        except Exception as err:  # back off only on out-of-memory errors
            if not is_oom(err):
                raise
            del err  # drop the traceback's references to the failed step's tensors
            failed.append(size)
            _free_memory()
            continue
        return MicroBatch(size, target // size, tuple(failed))
    raise RuntimeError(
        f"even a micro-batch of 1 example runs out of memory (tried {failed}); shorten the "
        "sequences, use amp='bf16'/'fp16', gradient checkpointing or a smaller model"
    )


def split_batch(batch: Any, size: int) -> list[Any]:
    """Split a batch along dim 0 into micro-batches of ``size`` (the last may be smaller):
    a tensor, or a dict / tuple / list of tensors (non-tensor entries are shared).

    Example:
        >>> parts = split_batch({"x": torch.zeros(5, 2), "y": torch.arange(5)}, 2)
        >>> [p["y"].tolist() for p in parts]
        [[0, 1], [2, 3], [4]]
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be an integer >= 1, got {size!r}")

    def n_rows(b: Any) -> int | None:
        if isinstance(b, torch.Tensor):
            return b.shape[0]
        values = b.values() if isinstance(b, Mapping) else b if isinstance(b, tuple | list) else ()
        return next((r for r in map(n_rows, values) if r is not None), None)

    def part(b: Any, start: int) -> Any:
        if isinstance(b, torch.Tensor):
            return b[start : start + size]
        if isinstance(b, Mapping):
            return {k: part(v, start) for k, v in b.items()}
        if isinstance(b, tuple | list):
            return type(b)(part(v, start) for v in b)
        return b

    n = n_rows(batch)
    if n is None:
        raise TypeError(f"batch holds no tensor to split: {type(batch).__name__}")
    return [part(batch, start) for start in range(0, n, size)]
