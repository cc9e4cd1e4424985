"""Tricks under DistributedDataParallel: 2 gloo processes on CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, make_batch, run_ddp

from danlu import Tricks


def _loss64(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"]), logits


def _rank_micro_batches(big, rank, world, sizes):
    """This rank's micro-batches: rank r takes its own contiguous slice of `big`."""
    per_rank = sum(sizes)
    lo = rank * per_rank
    out = []
    for s in sizes:
        out.append({k: v[lo : lo + s] for k, v in big.items()})
        lo += s
    return out


def _worker(rank, world, out_dir, sizes, weighted):
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(TinyTextClassifier().double())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tricks = Tricks(accumulate=len(sizes[rank]))
    big = make_batch(n=sum(map(sum, sizes)), seed=11)
    offset = sum(sum(s) for s in sizes[:rank])
    lo = offset
    for s in sizes[rank]:
        micro = {k: v[lo : lo + s] for k, v in big.items()}
        lo += s
        tricks.step(model, opt, micro, _loss64, num_items=s if weighted else None)
    assert tricks.state.step == 1
    torch.save(model.module.state_dict(), f"{out_dir}/rank{rank}.pt")


def _single_process(n):
    torch.manual_seed(0)
    model = TinyTextClassifier().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    _loss64(model, make_batch(n=n, seed=11))[0].backward()
    opt.step()
    return model.state_dict()


def _check(tmp_path, n):
    ref = _single_process(n)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    for k in ref:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        torch.testing.assert_close(r0[k], ref[k], atol=1e-6, rtol=0)


def test_ddp_accumulate_2_equals_single_process_global_batch(tmp_path):
    sizes = [[4, 4], [4, 4]]
    run_ddp(_worker, str(tmp_path), sizes, False)
    _check(tmp_path, 16)


def test_ddp_uneven_micro_batches_with_num_items(tmp_path):
    sizes = [[5, 2], [3, 4]]  # 7 and 7 examples per rank, uneven micro-batches
    run_ddp(_worker, str(tmp_path), sizes, True)
    _check(tmp_path, 14)
