"""FGM / PGD details the behavioural tests leave open (found by mutation testing, see
docs/mutation.md): the helpers' exact values, dtypes and edge cases, every error, restore and
hook bookkeeping, and PGD.run against a textbook PGD written here."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch
from torch import nn

from danlu import Tricks
from danlu.adversarial import FGM, PGD
from danlu.adversarial.fgm import accumulate_dtype, fgm_delta, grad_rows
from danlu.adversarial.pgd import project_rows


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ],
)
def test_accumulate_dtype(dtype, expected):
    assert accumulate_dtype(torch.zeros(1, dtype=dtype)) == expected


def test_grad_rows_dense_in_fp32_for_half():
    g = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, -12.0]], dtype=torch.float16)
    rows, values, norm = grad_rows(g)
    assert rows.tolist() == [1, 3]
    assert torch.equal(values, g[[1, 3]])
    assert norm.dtype == torch.float32 and norm.item() == 13.0


def test_grad_rows_sparse_coalesces_repeated_rows():
    g = torch.sparse_coo_tensor(
        torch.tensor([[2, 0, 2]]),
        torch.tensor([[1.0, 2.0], [0.0, 3.0], [2.0, 2.0]]),
        (4, 2),
        check_invariants=True,
    )
    rows, values, norm = grad_rows(g)
    assert rows.tolist() == [0, 2]
    assert values.tolist() == [[0.0, 3.0], [3.0, 4.0]]
    assert norm.item() == pytest.approx(34**0.5)


def test_fgm_delta_values_and_skips():
    g = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 0.0]])
    rows, r = fgm_delta(g, eps=0.5)
    assert rows.tolist() == [1, 2]
    torch.testing.assert_close(r, 0.5 * g[1:] / 3.0)
    assert fgm_delta(torch.zeros(3, 2), 1.0) is None
    assert fgm_delta(torch.tensor([[float("inf"), 0.0]]), 1.0) is None
    assert fgm_delta(torch.tensor([[float("nan"), 1.0]]), 1.0) is None
    rows, r = fgm_delta(g.half(), eps=1.0)
    assert r.dtype == torch.float32


def _model_and_grad(seed=0):
    torch.manual_seed(seed)
    model = TinyTextClassifier()
    batch = make_batch(seed=seed)
    loss_fn(model, batch)[0].backward()
    return model, batch


@pytest.mark.parametrize("cls", [FGM, PGD])
def test_errors_name_the_fix(cls):
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match=r"mode must be 'weight'.*got 'rows'"):
        cls(model, mode="rows")
    model.embed.weight.requires_grad_(False)
    with pytest.raises(ValueError, match=rf"{cls.__name__} perturbs.*frozen.*mode='hook'"):
        cls(model)
    cls(model, mode="hook")  # the output hook works on a frozen embedding


@pytest.mark.parametrize("cls", [FGM, PGD])
def test_tied_output_layer_warns(cls):
    class Tied(TinyTextClassifier):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.embed.weight

    with pytest.warns(
        UserWarning, match=rf"{cls.__name__}: the input embedding's weight is tied to Linear"
    ):
        cls(Tied())


def test_fgm_attack_restore_bookkeeping():
    model, batch = _model_and_grad()
    w0 = model.embed.weight.detach().clone()
    fgm = FGM(model, eps=0.5)
    assert repr(fgm) == "FGM(eps=0.5, mode='weight')"
    assert not fgm.attacked
    fgm.restore()  # no-op when not attacked
    assert fgm.attack() and fgm.attacked
    expected_rows, r = fgm_delta(model.embed.weight.grad, 0.5)
    torch.testing.assert_close(model.embed.weight[expected_rows], w0[expected_rows] + r)
    with pytest.raises(RuntimeError, match=r"called twice: call restore\(\) first"):
        fgm.attack()
    fgm.restore()
    assert not fgm.attacked and torch.equal(model.embed.weight, w0)
    with pytest.raises(KeyError), fgm.perturbed():
        assert fgm.attacked and not torch.equal(model.embed.weight, w0)
        raise KeyError
    assert not fgm.attacked and torch.equal(model.embed.weight, w0)


def test_fgm_without_gradient_attacks_nothing():
    model = TinyTextClassifier()
    fgm = FGM(model)
    assert fgm.attack() is False and not fgm.attacked and fgm.own_grad() is None
    calls = []
    fgm.after_backward(lambda: calls.append(1), None)
    assert calls == []


def test_fgm_own_grad_is_the_last_backward_alone_until_remove():
    model, _ = _model_and_grad(seed=0)
    fgm = FGM(model)
    first = model.embed.weight.grad.clone()
    assert torch.equal(fgm.own_grad(), first)  # no backward since: .grad itself
    batch = make_batch(seed=1)
    ref = TinyTextClassifier()
    ref.load_state_dict(model.state_dict())
    loss_fn(ref, batch)[0].backward()
    loss_fn(model, batch)[0].backward()  # adds onto .grad
    torch.testing.assert_close(fgm.own_grad(), ref.embed.weight.grad)
    torch.testing.assert_close(model.embed.weight.grad, first + ref.embed.weight.grad)
    fgm.attack()
    fgm.restore()
    assert torch.equal(fgm.own_grad(), model.embed.weight.grad)  # restore forgets it
    fgm.remove()
    loss_fn(model, batch)[0].backward()
    assert torch.equal(fgm.own_grad(), model.embed.weight.grad)  # the hook is gone


def test_fgm_remove_in_hook_mode_takes_the_forward_hook_off():
    model = TinyTextClassifier()
    fgm = FGM(model, mode="hook")
    assert repr(fgm) == "FGM(eps=1.0, mode='hook')"
    assert model.embed._forward_hooks
    loss_fn(model, make_batch())[0].backward()
    assert fgm.attack() and fgm.attacked
    fgm.remove()
    assert not fgm.attacked and not model.embed._forward_hooks


def test_project_rows():
    original = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    inside = original + torch.tensor([[0.3, 0.0], [0.0, 0.4]])  # ||r|| = 0.5
    assert torch.equal(project_rows(inside, original, 0.5), inside)  # on the ball: kept
    outside = original + torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ||r|| = 5 over both rows
    torch.testing.assert_close(
        project_rows(outside, original, 1.0), original + torch.tensor([[0.6, 0.0], [0.0, 0.8]])
    )
    half = project_rows(outside.half(), original.half(), 1.0)
    assert half.dtype == torch.float16


def _textbook_pgd(model, batch, eps, alpha, steps):
    """The Kaggle / 知乎 PGD loop over the whole embedding table."""
    emb = model.embed.weight
    loss_fn(model, batch)[0].backward()
    backup = emb.detach().clone()
    clean = {n: p.grad.clone() for n, p in model.named_parameters()}
    for t in range(steps):
        with torch.no_grad():
            g = emb.grad
            emb.add_(alpha * g / g.norm())
            r = emb - backup
            if r.norm() > eps:
                emb.copy_(backup + r * eps / r.norm())
        if t == steps - 1:
            for n, p in model.named_parameters():
                p.grad = clean[n].clone()
        else:
            model.zero_grad()
        loss_fn(model, batch)[0].backward()
    with torch.no_grad():
        emb.copy_(backup)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_pgd_run_matches_textbook(steps):
    batch = make_batch(seed=3)
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    model = TinyTextClassifier()
    model.load_state_dict(ref.state_dict())
    _textbook_pgd(ref, batch, eps=0.3, alpha=0.2, steps=steps)
    pgd = PGD(model, eps=0.3, alpha=0.2, steps=steps)
    assert repr(pgd) == f"PGD(eps=0.3, alpha=0.2, steps={steps}, mode='weight')"
    loss_fn(model, batch)[0].backward()
    calls = []
    pgd.run(lambda: calls.append(loss_fn(model, batch)[0].backward()))
    assert len(calls) == steps and not pgd.attacked
    assert all(p.requires_grad for p in model.parameters())
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n  # restored exactly
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_pgd_inside_tricks_matches_textbook():
    batch = make_batch(seed=4)
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    model = TinyTextClassifier()
    model.load_state_dict(ref.state_dict())
    _textbook_pgd(ref, batch, eps=0.3, alpha=0.2, steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    grads = {}
    opt.step = lambda closure=None: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters()}
    )
    Tricks([PGD(model, eps=0.3, alpha=0.2, steps=3)]).step(model, opt, batch, loss_fn)
    for n, q in ref.named_parameters():
        torch.testing.assert_close(grads[n], q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_pgd_exception_in_closure_restores_everything():
    model, batch = _model_and_grad()
    w0 = model.embed.weight.detach().clone()
    clean = model.embed.weight.grad.clone()
    pgd = PGD(model, eps=0.3, alpha=0.2, steps=3)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise KeyError
        loss_fn(model, batch)[0].backward()

    with pytest.raises(KeyError):
        pgd.run(closure)
    assert not pgd.attacked and torch.equal(model.embed.weight, w0)
    assert torch.equal(model.embed.weight.grad, clean)
    assert all(p.requires_grad for p in model.parameters())


def test_pgd_attack_order_errors_and_no_gradient():
    model = TinyTextClassifier()
    pgd = PGD(model)
    with pytest.raises(RuntimeError, match=r"PGD.attack\(\) before attack\(first=True\)"):
        pgd.attack()
    calls = []
    pgd.run(lambda: calls.append(1))  # no gradient yet: no adversarial pass
    assert calls == [] and not pgd.attacked
    loss_fn(model, make_batch())[0].backward()
    assert pgd.attack(first=True) and pgd.attacked
    with pytest.raises(RuntimeError, match=r"while attacked: call restore\(\) first"):
        pgd.attack(first=True)
    pgd.restore()
    assert not pgd.attacked
    pgd.restore()  # no-op


@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_pgd_remove_takes_its_hook_off(mode):
    model, batch = _model_and_grad()
    pgd = PGD(model, mode=mode)
    pgd.remove()
    assert not model.embed._forward_hooks
    before = model.embed.weight.grad.clone()
    loss_fn(model, batch)[0].backward()
    assert pgd._incoming is None  # no hook records the backward that added onto .grad
    assert not torch.equal(model.embed.weight.grad, before)


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


def test_messages_in_full():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match=_exact("eps must be a finite number > 0, got 0")):
        FGM(model, eps=0)
    fgm = FGM(model)
    loss_fn(model, make_batch())[0].backward()
    fgm.attack()
    with pytest.raises(
        RuntimeError, match=_exact("FGM.attack() called twice: call restore() first")
    ):
        fgm.attack()
    model.embed.weight.requires_grad_(False)
    frozen = (
        "FGM perturbs the input embedding's weight (50, 16), which is frozen "
        "(requires_grad=False: frozen embeddings, LoRA/PEFT adapters), so it gets no gradient "
        "and the attack would do nothing. Unfreeze it (weight.requires_grad_(True)), or "
        "perturb the embedding's output through a forward hook: FGM(model, ..., mode='hook') "
        "(FreeLB always does)"
    )
    with pytest.raises(ValueError, match=_exact(frozen)):
        FGM(model)


def test_sharded_weight_refused_in_weight_mode():
    model = TinyTextClassifier()
    model.embed.weight.device_mesh = object()  # what an FSDP2 DTensor carries
    sharded = (
        "PGD in weight mode perturbs rows of the input embedding's weight, which is sharded "
        "by FSDP2 (a DTensor: each rank holds a slice of the rows). Attack the embedding's "
        "output instead: PGD(model, ..., mode='hook') (FreeLB always does)"
    )
    with pytest.raises(ValueError, match=_exact(sharded)):
        PGD(model)


def test_tied_warning_in_full_at_the_callers_line_and_none_when_untied():
    class Tied(TinyTextClassifier):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(16, 50, bias=False)
            self.out.weight = self.embed.weight
            self.out2 = nn.Linear(16, 50, bias=False)
            self.out2.weight = self.embed.weight

    tied = (
        "FGM: the input embedding's weight is tied to Linear, Linear (an output layer, as in "
        "GPT-2 / BERT-MLM heads): weight mode perturbs that layer too, over every row its "
        "dense gradient reaches. FGM(model, ..., mode='hook') perturbs the input only"
    )
    with pytest.warns(UserWarning, match=_exact(tied)) as record:
        FGM(Tied())
    assert not record[0].filename.endswith("fgm.py")  # points at the caller, not danlu
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FGM(TinyTextClassifier())


class _TwoEmbeddings(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = nn.Embedding(50, 16)  # the default target: most rows
        self.small = nn.Embedding(20, 16)

    def forward(self, ids):
        return (self.big(ids) + self.small(ids % 20)).sum()


@pytest.mark.parametrize("cls", [FGM, PGD])
@pytest.mark.parametrize("mode", ["weight", "hook"])
def test_explicit_target_is_the_one_attacked(cls, mode):
    model = _TwoEmbeddings()
    trick = cls(model, target=model.small, mode=mode)
    assert trick.weight is model.small.weight
    model(torch.arange(10).view(2, 5)).backward()
    big0, small0 = model.big.weight.detach().clone(), model.small.weight.detach().clone()
    if mode == "hook":
        assert trick._output.module is model.small
    else:
        assert trick.attack() if cls is FGM else trick.attack(first=True)
        assert torch.equal(model.big.weight, big0) and not torch.equal(model.small.weight, small0)
        trick.restore()
        assert torch.equal(model.small.weight, small0)


def test_half_precision_embedding_rows():
    model, _ = _model_and_grad()
    model.embed.half()
    g = model.embed.weight.grad.half()
    model.embed.weight.grad = g
    w0 = model.embed.weight.detach().clone()
    fgm = FGM(model, eps=0.5)
    assert fgm.attack()
    rows, r = fgm_delta(g, 0.5)
    assert model.embed.weight.dtype == torch.float16
    assert torch.equal(model.embed.weight[rows], (w0[rows] + r).half())
    fgm.restore()
    assert torch.equal(model.embed.weight, w0)


def test_sparse_half_gradient_norm_in_fp32():
    g = torch.sparse_coo_tensor(
        torch.tensor([[1]]),
        torch.tensor([[300.0, 400.0]], dtype=torch.float16),
        (3, 2),
        check_invariants=True,
    )
    assert grad_rows(g)[2].dtype == torch.float32 and grad_rows(g)[2].item() == 500.0


@pytest.mark.parametrize("cls", [FGM, PGD])
def test_hook_mode_restore_clears_delta_and_grad(cls):
    model = TinyTextClassifier()
    trick = cls(model, mode="hook")
    assert trick.weight is model.embed.weight
    loss_fn(model, make_batch())[0].backward()
    assert trick.attack() if cls is FGM else trick.attack(first=True)
    trick.restore()
    assert not trick.attacked
    assert trick._output.delta is None and trick._output.grad is None


def _loss_with_output_delta(model, batch, delta):
    """TinyTextClassifier's loss with ``delta`` added to the embedding output (a leaf, so its
    ``.grad`` is the output's gradient)."""
    h = model.embed(batch["input_ids"]) + delta
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    pooled = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
    return F.cross_entropy(model.head(torch.tanh(model.hidden(pooled))), batch["labels"])


def _textbook_pgd_on_the_output(model, batch, eps, alpha, steps):
    delta = torch.zeros(*batch["input_ids"].shape, 16, requires_grad=True)
    _loss_with_output_delta(model, batch, delta).backward()
    clean = {n: p.grad.clone() for n, p in model.named_parameters()}
    g, adv = delta.grad, None
    for t in range(steps):
        step = alpha * g / g.norm()
        adv = step if adv is None else adv + step
        if adv.norm() > eps:
            adv = adv * eps / adv.norm()
        leaf = adv.detach().requires_grad_()
        if t == steps - 1:
            for n, p in model.named_parameters():
                p.grad = clean[n].clone()
        _loss_with_output_delta(model, batch, leaf).backward()
        g = leaf.grad
        if t < steps - 1:
            model.zero_grad()


@pytest.mark.parametrize("steps", [1, 3])
def test_pgd_hook_mode_matches_textbook_on_the_output(steps):
    batch = make_batch(seed=5)
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    model = TinyTextClassifier()
    model.load_state_dict(ref.state_dict())
    _textbook_pgd_on_the_output(ref, batch, eps=0.05, alpha=0.03, steps=steps)
    pgd = PGD(model, eps=0.05, alpha=0.03, steps=steps, mode="hook")
    assert not pgd.attacked
    loss_fn(model, batch)[0].backward()
    calls = []
    pgd.run(lambda: calls.append(loss_fn(model, batch)[0].backward()))
    assert len(calls) == steps and not pgd.attacked and pgd._output.delta is None
    assert all(p.requires_grad for p in model.parameters())
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=n)


def test_pgd_defaults_and_messages_in_full():
    model = TinyTextClassifier()
    assert repr(PGD(model)) == "PGD(eps=1.0, alpha=0.3, steps=3, mode='weight')"
    with pytest.raises(ValueError, match=_exact("eps must be a finite number > 0, got 0")):
        PGD(model, eps=0)
    with pytest.raises(ValueError, match=_exact("alpha must be a finite number > 0, got -1")):
        PGD(model, alpha=-1)
    pgd = PGD(model)
    with pytest.raises(RuntimeError, match=_exact("PGD.attack() before attack(first=True)")):
        pgd.attack()
    loss_fn(model, make_batch())[0].backward()
    pgd.attack(first=True)
    message = "PGD.attack(first=True) while attacked: call restore() first"
    with pytest.raises(RuntimeError, match=_exact(message)):
        pgd.attack(first=True)


def test_project_rows_half_norm_in_fp32():
    r = torch.tensor([[60000.0, 60000.0]], dtype=torch.float16)  # ||r|| overflows in fp16
    out = project_rows(r, torch.zeros_like(r), eps=1.0)
    torch.testing.assert_close(out.float(), torch.tensor([[2**-0.5, 2**-0.5]]), atol=1e-3, rtol=0)


def test_pgd_drop_in_steps_without_backward_and_new_rows():
    """attack() again without a backward reuses .grad; a later gradient on new rows backs
    them up too; the projection covers all moved rows; restore gives every row back."""
    emb = nn.Embedding(6, 2)
    model = nn.Sequential(emb)
    w0 = emb.weight.detach().clone()
    pgd = PGD(model, eps=1.0, alpha=0.4)
    emb.weight.grad = torch.tensor([[3.0, 4.0], [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]])
    pgd.attack(first=True)
    pgd.attack()  # no backward in between: the same direction again
    expected = w0.clone()
    expected[0] += torch.tensor([0.48, 0.64])
    torch.testing.assert_close(emb.weight.detach(), expected)
    emb.weight.grad = torch.tensor([[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [0.0, 2.0]])
    pgd._incoming = None
    pgd.attack()  # row 5 is new: r = (0.48, 0.64) on row 0, (0, 0.4) on row 5, ||r|| <= 1
    expected[5] += torch.tensor([0.0, 0.4])
    torch.testing.assert_close(emb.weight.detach(), expected)
    pgd.attack()  # ||r|| = ||(0.48, 0.64, 0, 0.8)|| > 1: projected over both rows
    r = torch.tensor([0.48, 0.64, 0.0, 0.8])
    r = r / r.norm()
    torch.testing.assert_close(emb.weight[0], w0[0] + r[:2])
    torch.testing.assert_close(emb.weight[5], w0[5] + r[2:])
    pgd.restore()
    assert torch.equal(emb.weight, w0)


def test_pgd_half_precision_embedding_rows():
    emb = nn.Embedding(4, 2).half()
    w0 = emb.weight.detach().clone()
    pgd = PGD(nn.Sequential(emb), eps=1.0, alpha=0.5)
    emb.weight.grad = torch.tensor([[0, 0], [3.0, 4.0], [0, 0], [0, 0]]).half()
    assert pgd.attack(first=True)
    step = torch.tensor([0.3, 0.4], dtype=torch.float16)  # added in the weight's dtype
    assert torch.equal(emb.weight[1], w0[1] + step)
    pgd.restore()
    assert torch.equal(emb.weight, w0)


def test_pgd_hook_mode_without_gradient_runs_nothing_and_exception_unfreezes():
    model = TinyTextClassifier()
    pgd = PGD(model, mode="hook")
    calls = []
    pgd.run(lambda: calls.append(1))  # no backward yet: nothing recorded, no pass
    assert calls == [] and pgd._output.delta is None
    batch = make_batch()
    loss_fn(model, batch)[0].backward()

    def closure():
        loss_fn(model, batch)[0].backward()
        raise KeyError

    with pytest.raises(KeyError):
        pgd.run(closure)  # fails in the first inner pass, with the parameters frozen
    assert all(p.requires_grad is True for p in model.parameters())
    assert not pgd.attacked and pgd._output.delta is None
