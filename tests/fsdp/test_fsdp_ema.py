"""FSDP2 (``fully_shard``) on 2 gloo CPU processes: EMA keeps a shard-local shadow, gathers
the full shadow on rank 0 equal to a single-process EMA on the same data, evaluates with the
averaged shards and reloads a full state dict into a sharded EMA. FGM refuses the sharded
embedding weight in weight mode and trains in hook mode like a single process attacking each
rank's half on its own."""

from __future__ import annotations

import torch
import torch.distributed as dist
from helpers import TinyTextClassifier, loss_fn, make_batch, run_ddp

import danlu
from danlu.adversarial import FGM
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


def _fsdp_fgm(rank):
    model = _sharded_model()
    try:
        FGM(model)
        refused = ""
    except ValueError as err:
        refused = str(err)
    fgm = FGM(model, eps=0.5, mode="hook")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for i in range(2):
        batch = _halves(i)[rank]
        opt.zero_grad()
        loss_fn(model, batch)[0].backward()
        with fgm.perturbed():
            loss_fn(model, batch)[0].backward()
        opt.step()
    return refused, {n: p.full_tensor() for n, p in model.named_parameters()}


def _fsdp_worker(rank, world, out_dir):
    refused, fgm_params = _fsdp_fgm(rank)
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
                "fgm_params": fgm_params}, f"{out_dir}/{rank}.pt")  # fmt: skip


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

    # FGM: weight mode refuses the sharded table; hook mode = each half attacked on its own
    assert "sharded by FSDP2" in r0["refused"] and "mode='hook'" in r0["refused"]
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    tricks = danlu.Tricks([FGM(ref, eps=0.5, mode="hook")], accumulate=2)
    for i in range(2):
        for half in _halves(i):  # the mean over the halves, as FSDP2 averages the ranks
            tricks.step(ref, opt, half, loss_fn)
    for n, p in ref.named_parameters():
        torch.testing.assert_close(r0["fgm_params"][n], p.detach(), atol=1e-5, rtol=0, msg=n)
    torch.manual_seed(0)
    plain = TinyTextClassifier()  # without the attack the weights differ: FGM did something
    plain_opt = torch.optim.SGD(plain.parameters(), lr=LR)
    no_attack = danlu.Tricks([], accumulate=2)
    for i in range(2):
        for half in _halves(i):
            no_attack.step(plain, plain_opt, half, loss_fn)
    assert not torch.allclose(r0["fgm_params"]["head.weight"], plain.head.weight, atol=1e-4)
