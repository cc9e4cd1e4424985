"""danlu.microbatch: a fake OOM above size k picks <= k, and the resulting accumulated
update equals the big-batch update."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch

from danlu import Tricks
from danlu.microbatch import MicroBatch, find_micro_batch, is_oom, split_batch

OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _fake_device(k, model, batch, tried):
    """try_step that runs a real forward/backward but 'runs out of memory' above k."""

    def try_step(size):
        tried.append(size)
        if size > k:
            raise OOM(f"CUDA out of memory. Tried to allocate {size} MiB")
        loss, _ = loss_fn(model, {key: v[:size] for key, v in batch.items()})
        loss.backward()
        model.zero_grad(set_to_none=True)

    return try_step


@pytest.mark.parametrize(
    ("k", "target", "size"), [(5, 32, 4), (8, 32, 8), (7, 48, 6), (100, 12, 12)]
)
def test_fake_oom_above_k_picks_the_largest_divisor_at_most_k(k, target, size):
    model, tried = TinyTextClassifier(), []
    mb = find_micro_batch(_fake_device(k, model, make_batch(n=target), tried), target)
    assert mb == MicroBatch(size, target // size, tuple(s for s in tried if s > k))
    assert mb.size <= k and mb.size * mb.accumulate == target
    assert tried[-1] == size and all(target % s == 0 for s in tried)
    assert tried == sorted(tried, reverse=True)


def test_the_accumulated_update_equals_the_big_batch_update():
    torch.manual_seed(0)
    big_model = TinyTextClassifier(dropout=0.0)
    small_model = copy.deepcopy(big_model)
    batch = make_batch(n=24, seed=3)
    mb = find_micro_batch(_fake_device(10, small_model, batch, []), target=24)
    assert (mb.size, mb.accumulate) == (8, 3)

    opt_big = torch.optim.SGD(big_model.parameters(), lr=0.5)
    Tricks().step(big_model, opt_big, batch, loss_fn)  # one step on the whole batch

    opt_small = torch.optim.SGD(small_model.parameters(), lr=0.5)
    tricks = Tricks(accumulate=mb.accumulate)
    for part in split_batch(batch, mb.size):
        state = tricks.step(small_model, opt_small, part, loss_fn)
    assert state.step == 1
    assert_params_close(small_model, big_model, atol=1e-6)


def test_other_errors_are_raised_and_oom_at_one_is_reported():
    def broken(size):
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        find_micro_batch(broken, 8)

    def never_fits(size):
        raise RuntimeError("MPS backend out of memory")

    with pytest.raises(RuntimeError, match="even a micro-batch of 1"):
        find_micro_batch(never_fits, 4)
    assert is_oom(RuntimeError("CUDA error: out of memory")) and not is_oom(RuntimeError("x"))
    with pytest.raises(RuntimeError) as info:  # the CPU allocator's own error, for real
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(info.value)


def test_max_size_and_argument_errors():
    tried = []
    assert find_micro_batch(tried.append, 32, max_size=10).size == 8 and tried == [8]
    with pytest.raises(ValueError, match="target"):
        find_micro_batch(tried.append, 0)
    with pytest.raises(ValueError, match="max_size"):
        find_micro_batch(tried.append, 8, max_size=0)
    with pytest.raises(ValueError, match="size"):
        split_batch(torch.zeros(3), 0)
    with pytest.raises(TypeError, match="no tensor"):
        split_batch({"a": [1, 2]}, 1)


def test_split_batch_shapes():
    batch = (torch.arange(5), {"m": torch.ones(5, 2), "name": "x"})
    parts = split_batch(batch, 2)
    assert [p[0].tolist() for p in parts] == [[0, 1], [2, 3], [4]]
    assert parts[2][1]["m"].shape == (1, 2) and parts[2][1]["name"] == "x"
