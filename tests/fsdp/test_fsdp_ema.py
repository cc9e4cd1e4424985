"""FSDP2 (``fully_shard``) on 2 gloo CPU processes: EMA keeps a shard-local shadow, gathers
the full shadow on rank 0 equal to a single-process EMA on the same data, evaluates with the
averaged shards and reloads a full state dict into a sharded EMA."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp

from danlu.optim import EMA

STEPS, DECAY, LR = 4, 0.7, 0.5


def _train(model, ema, rank=None, world=1):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for i in range(STEPS):
        batch = make_batch(seed=i)  # 8 examples; each rank takes its half
        if rank is not None:
            batch = {k: v.chunk(world)[rank] for k, v in batch.items()}
        opt.zero_grad()
        loss_fn(model, batch)[0].backward()  # FSDP2 averages the gradients over the ranks
        opt.step()
        ema.update()


def _fsdp_worker(rank, world, out_dir):
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TinyTextClassifier()
    for block in (model.embed, model.hidden):
        fully_shard(block)
    fully_shard(model)
    ema = EMA(model, decay=DECAY)
    _train(model, ema, rank, world)
    local_rows = {n: s.to_local().shape[0] for n, s in ema.shadow.items()}
    full = ema.full_state_dict()
    probe = make_batch(seed=99)
    with ema.averaged():
        averaged_out = model(probe["input_ids"]).detach()
    live_out = model(probe["input_ids"]).detach()
    box = [full]
    dist.broadcast_object_list(box, src=0)  # a rank-0 file, read on every rank
    again = EMA(model, decay=DECAY)
    again.load_state_dict(box[0])
    reloaded = {n: s.full_tensor() for n, s in again.shadow.items()}
    torch.save({"full": full, "rows": local_rows, "averaged_out": averaged_out,
                "live_out": live_out, "reloaded": reloaded}, f"{out_dir}/{rank}.pt")  # fmt: skip


def test_fsdp2_ema_shadow_gathered_on_rank0_equals_single_process(tmp_path):
    run_ddp(_fsdp_worker, str(tmp_path))
    r0 = torch.load(tmp_path / "0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "1.pt", weights_only=True)
    assert r1["full"] == {}  # only rank 0 holds the full state
    assert r0["rows"]["embed.weight"] == 25  # each rank averaged its half of the 50 rows

    torch.manual_seed(0)
    model = TinyTextClassifier()
    ema = EMA(model, decay=DECAY)
    _train(model, ema)
    assert r0["full"]["step"] == ema.step == STEPS
    assert set(r0["full"]["shadow"]) == set(ema.shadow)
    for n, s in ema.shadow.items():
        torch.testing.assert_close(r0["full"]["shadow"][n], s, atol=1e-5, rtol=0, msg=n)
        for r in (r0, r1):
            torch.testing.assert_close(r["reloaded"][n], s, atol=1e-5, rtol=0, msg=n)
    probe = make_batch(seed=99)["input_ids"]
    with ema.averaged():
        torch.testing.assert_close(r0["averaged_out"], model(probe).detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(r0["live_out"], model(probe).detach(), atol=1e-5, rtol=0)
    assert not torch.allclose(r0["averaged_out"], r0["live_out"], atol=1e-3)
