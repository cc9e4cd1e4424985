"""FSDP2 (``fully_shard``) on 2 gloo CPU processes: EMA keeps a shard-local shadow, gathers
the full shadow on rank 0 equal to a single-process EMA on the same data, evaluates with the
averaged shards and reloads a full state dict into a sharded EMA. FGM (weight mode) and SWA
refuse the sharded model with errors naming the supported path; FGM and PGD in hook mode and
FreeLB train like a single process attacking each rank's half on its own."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp

import danlu
from danlu.adversarial import FGM, PGD, FreeLB
from danlu.optim import EMA, SWA

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


def _sharded_model():
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(0)
    model = TinyTextClassifier()
    for block in (model.embed, model.hidden):
        fully_shard(block)
    fully_shard(model)
    return model


def _halves(i):
    return [{k: v.chunk(2)[r] for k, v in make_batch(seed=i).items()} for r in range(2)]


ATTACKS = {  # hook-mode attacks on the sharded embedding's output (FreeLB always is)
    "fgm": lambda m: FGM(m, eps=0.5, mode="hook"),
    "pgd": lambda m: PGD(m, eps=0.5, alpha=0.3, steps=2, mode="hook"),
    "freelb": lambda m: FreeLB(m, steps=2, alpha=0.1, init_mag=0.0),
}


def _fsdp_attacks(rank):
    refused = {}
    for name, make in (("FGM", FGM), ("SWA", lambda m: SWA(m, start_step=1))):
        try:
            make(_sharded_model())
        except ValueError as err:
            refused[name] = str(err)
    trained = {}
    for name, make in ATTACKS.items():
        model = _sharded_model()
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        tricks = danlu.Tricks([make(model)])
        for i in range(2):
            tricks.step(model, opt, _halves(i)[rank], loss_fn)
        trained[name] = {n: p.full_tensor() for n, p in model.named_parameters()}
    return refused, trained


def _fsdp_worker(rank, world, out_dir):
    refused, attacked = _fsdp_attacks(rank)
    model = _sharded_model()
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
                "live_out": live_out, "reloaded": reloaded, "refused": refused,
                "attacked": attacked}, f"{out_dir}/{rank}.pt")  # fmt: skip


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

    # weight-mode FGM and SWA refuse the sharded model; each hook-mode attack equals one
    # process attacking each rank's half on its own (accumulation 2 = the mean over ranks)
    assert "sharded by FSDP2" in r0["refused"]["FGM"] and "mode='hook'" in r0["refused"]["FGM"]
    assert "use EMA" in r0["refused"]["SWA"]
    torch.manual_seed(0)
    plain = TinyTextClassifier()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=LR)
    no_attack = danlu.Tricks([], accumulate=2)
    for i in range(2):
        for half in _halves(i):
            no_attack.step(plain, plain_opt, half, loss_fn)
    for name, make in ATTACKS.items():
        torch.manual_seed(0)
        ref = TinyTextClassifier()
        opt = torch.optim.SGD(ref.parameters(), lr=LR)
        tricks = danlu.Tricks([make(ref)], accumulate=2)
        for i in range(2):
            for half in _halves(i):
                tricks.step(ref, opt, half, loss_fn)
        got = r0["attacked"][name]
        for n, p in ref.named_parameters():
            torch.testing.assert_close(got[n], p.detach(), atol=1e-5, rtol=0, msg=f"{name} {n}")
        assert not torch.allclose(got["head.weight"], plain.head.weight, atol=1e-4), name
