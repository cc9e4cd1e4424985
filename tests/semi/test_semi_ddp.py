"""UDA, FixMatch and VAT under DDP (2 gloo processes): each rank draws its own unlabelled
shard; equal halves give the single-process update on the whole batches."""

from __future__ import annotations

import copy

import torch
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp

from danlu import Tricks
from danlu.adversarial import VAT
from danlu.semi import UDA, FixMatch


def _logits(model, batch):
    return model(batch["input_ids"])


def _pairs(rank=None):
    """Two (clean, augmented) unlabelled batches of 8; a rank gets its half of each."""
    out = []
    for i in range(2):
        ids = make_batch(n=8, seed=40 + i)["input_ids"]
        if rank is not None:
            ids = ids[rank * 4 : (rank + 1) * 4]
        out.append(({"input_ids": ids}, {"input_ids": ids.roll(1, dims=1)}))
    return out


def _worker(rank, world, out_dir):
    torch.manual_seed(0)
    base = TinyTextClassifier().double()
    results = {}
    makers = {
        "uda": lambda m, u: UDA(u, temperature=0.5, threshold=0.34, logits_fn=_logits),
        "fixmatch": lambda m, u: FixMatch(u, threshold=0.34, logits_fn=_logits),
    }
    for name, make in makers.items():
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        single = copy.deepcopy(base)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
        ref_opt = torch.optim.SGD(single.parameters(), lr=0.5)
        tricks, ref = Tricks([make(ddp, _pairs(rank))]), Tricks([make(single, _pairs())])
        for i in range(3):
            big = make_batch(n=8, seed=i)
            tricks.step(ddp, opt, {k: v[rank * 4 : (rank + 1) * 4] for k, v in big.items()},
                        loss_fn)  # fmt: skip
            ref.step(single, ref_opt, big, loss_fn)
        results[name], results[name + "_single"] = ddp.module.state_dict(), single.state_dict()
    # VAT on unlabelled batches with accumulation (no_sync micro-batches): ranks identical
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5)
    vat = VAT(ddp, [c for c, _ in _pairs(rank)], eps=0.5, logits_fn=_logits)
    tricks = Tricks([vat], accumulate=2)
    for i in range(4):
        tricks.step(ddp, opt, make_batch(n=4, seed=10 * i + rank), loss_fn)
    results["vat_acc"] = ddp.module.state_dict()
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def test_ddp_halves_equal_single_process(tmp_path):
    run_ddp(_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("uda", "fixmatch", "vat_acc"):
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    for key in ("uda", "fixmatch"):
        for k in r0[key]:
            torch.testing.assert_close(r0[key][k], r0[key + "_single"][k], rtol=0, atol=1e-10,
                                       msg=f"{key} {k}")  # fmt: skip
    assert not torch.equal(r0["uda"]["hidden.weight"], r0["fixmatch"]["hidden.weight"])
