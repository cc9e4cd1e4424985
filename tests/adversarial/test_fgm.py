"""FGM against the textbook full-table implementation, exact restore, skips, fp16, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from _adversarial_models import TextbookFGM, batch, loss_fn, make, window_set_aside
from helpers import assert_params_close

from danlu import Tricks
from danlu.adversarial import FGM, PGD, fgm_delta


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_perturbation_and_grads_match_textbook(kind):
    model, emb_name = make(kind)
    ref = copy.deepcopy(model)
    b = batch()
    loss_fn(model, b)[0].backward()
    loss_fn(ref, b)[0].backward()
    fgm, tb = FGM(model, eps=0.7), TextbookFGM(ref, emb_name, eps=0.7)
    w = fgm.weight
    before = w.detach().clone()
    assert fgm.attack() and fgm.attacked
    tb.attack()
    ref_w = dict(ref.named_parameters())[next(n for n, _ in ref.named_parameters()
                                              if emb_name in n)]
    torch.testing.assert_close(w.detach(), ref_w.detach(), rtol=0, atol=1e-12)
    assert abs(float((w.detach() - before).norm()) - 0.7) < 1e-9
    unused = torch.arange(40, w.shape[0])  # rows no token used stay bit-identical
    assert torch.equal(w[unused], before[unused])
    loss_fn(model, b)[0].backward()
    loss_fn(ref, b)[0].backward()
    fgm.restore()
    tb.restore()
    assert torch.equal(w.detach(), before)
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_training_through_tricks_under_accumulation_attacks_each_micro_batch_alone(kind):
    """Each micro-batch's attack equals FGM on that micro-batch alone (the textbook loop
    uses the window's running gradient sum instead: issue 14, defect 4)."""
    model, emb_name = make(kind)
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    tricks = Tricks([FGM(model, eps=0.5)], accumulate=3)
    tb = TextbookFGM(ref, emb_name, eps=0.5)
    for i in range(6):
        b = batch(seed=i)
        tricks.step(model, opt, b, loss_fn)
        with window_set_aside(ref):
            (loss_fn(ref, b)[0] / 3).backward()
            tb.attack()
            (loss_fn(ref, b)[0] / 3).backward()
            tb.restore()
        if i % 3 == 2:
            ref_opt.step()
            ref_opt.zero_grad()
    assert_params_close(model, ref, atol=1e-9)


def test_each_micro_batch_perturbation_has_norm_eps_and_only_its_own_rows():
    model, _ = make("gru")
    fgm = FGM(model, eps=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []

    def recording_loss(m, b):
        if fgm.attacked:
            delta = fgm.weight.detach()[fgm._rows] - fgm._backup
            seen.append((torch.linalg.vector_norm(delta).item(), set(fgm._rows.tolist())))
        return loss_fn(m, b)

    tricks = Tricks([fgm], accumulate=4)
    for i in range(4):
        b = {**batch(n=2, seq=3, seed=i)}
        b["input_ids"] = b["input_ids"] % 10 + 10 * i  # disjoint rows per micro-batch
        tricks.step(model, opt, b, recording_loss)
        assert seen[-1][1] <= set(b["input_ids"].flatten().tolist())
    assert [round(n, 6) for n, _ in seen] == [1.0] * 4


def test_sparse_embedding_gradient():
    torch.manual_seed(0)
    dense = torch.nn.Embedding(30, 4).double()
    sparse = torch.nn.Embedding(30, 4, sparse=True).double()
    sparse.load_state_dict(dense.state_dict())
    ids = torch.tensor([[1, 2, 2, 7]])
    for emb in (dense, sparse):
        (emb(ids) ** 2).sum().backward()
    r_dense = fgm_delta(dense.weight.grad, 1.0)
    r_sparse = fgm_delta(sparse.weight.grad, 1.0)
    assert r_dense[0].tolist() == r_sparse[0].tolist() == [1, 2, 7]
    torch.testing.assert_close(r_dense[1], r_sparse[1])
    fgm = FGM(sparse, eps=1.0)
    before = sparse.weight.detach().clone()
    assert fgm.attack()
    torch.testing.assert_close(sparse.weight[[1, 2, 7]] - before[[1, 2, 7]], r_dense[1])
    fgm.restore()
    assert torch.equal(sparse.weight.detach(), before)


@pytest.mark.parametrize("bad", ["zero", "nan", "inf", "none"])
def test_zero_or_non_finite_gradient_leaves_weights_untouched(bad):
    model, _ = make("gru")
    fgm = FGM(model, eps=1.0)
    before = fgm.weight.detach().clone()
    if bad != "none":
        loss_fn(model, batch())[0].backward()
        fill = {"zero": 0.0, "nan": float("nan"), "inf": float("inf")}[bad]
        if bad == "zero":
            fgm.weight.grad.zero_()
        else:
            fgm.weight.grad[3, 0] = fill
    with fgm.perturbed():
        assert not fgm.attacked
        assert torch.equal(fgm.weight.detach(), before)
    assert torch.equal(fgm.weight.detach(), before)


def test_restore_on_exception_and_double_attack():
    model, _ = make("gru")
    fgm = FGM(model)
    before = fgm.weight.detach().clone()
    loss_fn(model, batch())[0].backward()
    with pytest.raises(KeyError), fgm.perturbed():
        assert not torch.equal(fgm.weight.detach(), before)
        raise KeyError("boom")
    assert torch.equal(fgm.weight.detach(), before)
    fgm.attack()
    with pytest.raises(RuntimeError, match="restore"):
        fgm.attack()
    fgm.restore()
    assert torch.equal(fgm.weight.detach(), before)


def _perturbation(amp: bool, init_scale: float = 2.0**12):
    model, _ = make("bert")
    model = model.float()
    fgm = FGM(model, eps=1.0)
    before = fgm.weight.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale, enabled=amp)
    with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
        loss = loss_fn(model, batch())[0]
    scaler.scale(loss).backward()
    attacked = fgm.attack()
    delta = fgm.weight.detach() - before
    fgm.restore()
    assert torch.equal(fgm.weight.detach(), before)
    return attacked, delta


def test_fp16_grad_scaler_perturbation_equals_fp32():
    _, ref = _perturbation(amp=False)
    attacked, delta = _perturbation(amp=True)
    assert attacked
    assert abs(float(delta.norm()) - 1.0) < 1e-4  # the loss scale does not leak into eps
    cos = torch.nn.functional.cosine_similarity(delta.flatten(), ref.flatten(), dim=0)
    assert cos > 0.999
    torch.testing.assert_close(delta, ref, atol=2e-3, rtol=0)


def test_fp16_overflow_is_skipped():
    attacked, delta = _perturbation(amp=True, init_scale=2.0**127)
    assert not attacked and torch.count_nonzero(delta) == 0


def test_errors():
    model, _ = make("gru")
    for eps in (0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="eps"):
            FGM(model, eps=eps)


def test_through_torch_compile_matches_eager():
    model, _ = make("gru")
    ref = copy.deepcopy(model)
    compiled = torch.compile(model, backend="eager")  # dynamo tracing, no C++ toolchain
    for wrapped, inner in ((compiled, model), (ref, ref)):
        opt = torch.optim.SGD(inner.parameters(), lr=0.1)
        tricks = Tricks([FGM(wrapped, eps=0.5)])
        for i in range(2):
            tricks.step(wrapped, opt, batch(seed=i), loss_fn)
    assert_params_close(model, ref, atol=1e-10)


@pytest.mark.parametrize("cls", [FGM, PGD])
def test_a_frozen_embedding_is_refused_with_the_way_out(cls):
    model, _ = make("gru")
    model.emb.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"frozen \(requires_grad=False.*Unfreeze it.*forward hook"):
        cls(model)


def test_no_attack_means_no_second_pass_so_the_gradient_is_the_clean_one():
    """An attack that moves nothing (here the embedding is frozen after construction) must
    not run the closure: a second clean pass would double every gradient (issue 14)."""
    model, _ = make("gru")
    ref = copy.deepcopy(model)
    fgm = FGM(model, eps=1.0)
    model.emb.weight.requires_grad_(False)
    ref.emb.weight.requires_grad_(False)
    calls = []

    def counting_loss(m, b):
        calls.append(1)
        return loss_fn(m, b)

    b = batch(seed=3)
    Tricks([fgm]).forward_backward(model, b, counting_loss, lambda loss: loss.backward())
    loss_fn(ref, b)[0].backward()
    assert len(calls) == 1
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
