"""FGM, PGD (weight and hook mode), FreeLB and AWP under DistributedDataParallel (2 gloo
processes on CPU)."""

from __future__ import annotations

import copy

import torch
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp

from danlu import Tricks
from danlu.adversarial import AWP, FGM, PGD, FreeLB


def _worker(rank, world, out_dir):
    torch.manual_seed(0)
    base = TinyTextClassifier().double()
    single = copy.deepcopy(base)
    results = {}
    # FGM, no accumulation: every backward all-reduces, so DDP on two halves equals one
    # process on the global batch (the perturbation comes from the averaged gradient).
    ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(single.parameters(), lr=1e-2)
    tricks, ref_tricks = Tricks([FGM(ddp, eps=0.5)]), Tricks([FGM(single, eps=0.5)])
    for i in range(3):
        big = make_batch(n=8, seed=i)
        mine = {k: v[rank * 4 : (rank + 1) * 4] for k, v in big.items()}
        tricks.step(ddp, opt, mine, loss_fn)
        ref_tricks.step(single, ref_opt, big, loss_fn)
    results["fgm"] = ddp.module.state_dict()
    results["single"] = single.state_dict()
    # with accumulation (non-boundary micro-batches under no_sync): ranks stay identical
    for name, make in (
        ("fgm_acc", lambda m: FGM(m, eps=0.5)),
        ("pgd_acc", lambda m: PGD(m, eps=0.5, alpha=0.2, steps=3)),
        ("freelb_acc", lambda m: FreeLB(m, steps=2, alpha=0.1)),
        ("awp_acc", lambda m: AWP(m, adv_lr=0.5, adv_eps=0.01)),
        ("fgm_hook_acc", lambda m: FGM(m, eps=0.5, mode="hook")),
        ("pgd_hook_acc", lambda m: PGD(m, eps=0.5, alpha=0.2, steps=3, mode="hook")),
    ):
        ddp = torch.nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
        tricks = Tricks([make(ddp)], accumulate=2)
        for i in range(4):
            tricks.step(ddp, opt, make_batch(n=4, seed=10 * i + rank), loss_fn)
        results[name] = ddp.module.state_dict()
    torch.save(results, f"{out_dir}/rank{rank}.pt")


ACC = ("fgm_acc", "pgd_acc", "freelb_acc", "awp_acc", "fgm_hook_acc", "pgd_hook_acc")


def test_ddp_ranks_identical_and_equal_to_single_process(tmp_path):
    run_ddp(_worker, str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in ("fgm", *ACC):
        for k in r0[key]:
            assert torch.equal(r0[key][k], r1[key][k]), (key, k)
    torch.manual_seed(0)
    start = TinyTextClassifier().double()
    for key in ACC:
        assert any(not torch.equal(v, start.state_dict()[k]) for k, v in r0[key].items()), key
    for k, v in r0["fgm"].items():
        torch.testing.assert_close(v, r0["single"][k], rtol=0, atol=1e-10, msg=k)
