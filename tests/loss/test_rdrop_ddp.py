"""R-Drop under DistributedDataParallel (2 gloo processes): two forwards before one backward,
and the duplicated batch, both give the synchronised full-batch gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, make_batch, run_ddp

from danlu import Tricks
from danlu.loss import RDrop

MODES = ("two_pass", "duplicate")


def _loss64(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"]), logits


def _worker(rank, world, out_dir):
    big = make_batch(n=16, seed=5)
    mine = {k: v[rank * 8 : (rank + 1) * 8] for k, v in big.items()}
    for mode in MODES:
        torch.manual_seed(0)
        model = torch.nn.parallel.DistributedDataParallel(TinyTextClassifier().double())
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        tricks = Tricks([RDrop(alpha=2.0, mode=mode)])
        for _ in range(2):
            tricks.step(model, opt, mine, _loss64)
        torch.save(model.module.state_dict(), f"{out_dir}/{mode}{rank}.pt")


def test_rdrop_under_ddp_matches_single_process(tmp_path):
    run_ddp(_worker, str(tmp_path))
    # no dropout: both passes agree, the KL term is 0 and R-Drop reduces to cross-entropy
    torch.manual_seed(0)
    ref = TinyTextClassifier().double()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for _ in range(2):
        _loss64(ref, make_batch(n=16, seed=5))[0].backward()
        opt.step()
        opt.zero_grad()
    for mode in MODES:
        r0, r1 = torch.load(tmp_path / f"{mode}0.pt"), torch.load(tmp_path / f"{mode}1.pt")
        for k, v in ref.state_dict().items():
            assert torch.equal(r0[k], r1[k]), f"{mode}: ranks differ in {k}"
            torch.testing.assert_close(r0[k], v, atol=1e-10, rtol=0, msg=f"{mode}: {k}")
