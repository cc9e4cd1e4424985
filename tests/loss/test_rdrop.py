"""R-Drop: the KL against plain formulas, both forms against each other, masks, Tricks."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch, split_batch
from torch import nn

from danlu import Order, Trick, Tricks
from danlu.loss import Focal, RDrop, duplicate_batch, focal_loss, rdrop_loss, symmetric_kl


def plain_sym_kl(l1, l2):
    """½(KL(p1‖p2) + KL(p2‖p1)) per row, textbook form, fp64."""
    p1, p2 = torch.softmax(l1.double(), -1), torch.softmax(l2.double(), -1)
    kl12 = (p1 * (torch.log(p1) - torch.log(p2))).sum(-1)
    kl21 = (p2 * (torch.log(p2) - torch.log(p1))).sum(-1)
    return 0.5 * (kl12 + kl21)


class RowNoiseNet(nn.Module):
    """Linear -> dropout -> linear, whose dropout masks are drawn row by row from an own
    generator. A mask then depends only on how many rows were drawn before it, so two passes
    over a batch and one pass over the batch duplicated (rows 0..B-1, then B..2B-1 of the
    random stream) see exactly the same masks, while the two halves still differ."""

    def __init__(self, d=6, hidden=16, classes=3, p=0.3, seed=0):
        super().__init__()
        self.l1, self.l2, self.p = nn.Linear(d, hidden), nn.Linear(hidden, classes), p
        self.gen = torch.Generator().manual_seed(seed)

    def forward(self, x):
        h = torch.tanh(self.l1(x))
        if self.training:
            rows = [torch.rand(h.shape[1:], generator=self.gen) > self.p for _ in range(len(h))]
            h = h * torch.stack(rows) / (1 - self.p)
        return self.l2(h)


def row_loss_fn(model, batch):
    logits = model(batch["x"])
    flat = logits.reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, batch["labels"].reshape(-1)), logits


def row_batch(b=8, t=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (b,) if t is None else (b, t)
    return {
        "x": torch.randn(*shape, 6, generator=g),
        "labels": torch.randint(0, 3, shape, generator=g),
    }


# ------------------------------------------------------------------ the KL and the loss
def test_symmetric_kl_matches_plain_formula_and_kl_div():
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(10, 5, generator=g) * 2, torch.randn(10, 5, generator=g) * 2
    ours = symmetric_kl(l1, l2)
    torch.testing.assert_close(ours.double(), plain_sym_kl(l1, l2).mean(), rtol=1e-5, atol=1e-7)
    lp1, lp2 = F.log_softmax(l1, -1), F.log_softmax(l2, -1)
    builtin = 0.5 * (
        F.kl_div(lp2, lp1, log_target=True, reduction="batchmean")
        + F.kl_div(lp1, lp2, log_target=True, reduction="batchmean")
    )
    torch.testing.assert_close(ours, builtin, rtol=1e-5, atol=1e-7)
    assert symmetric_kl(l1, l1).item() == 0.0
    assert torch.isfinite(symmetric_kl(l1 * 1e4, l2 * 1e4))


def test_symmetric_kl_gradient_matches_fp64_autograd():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    a1, b1 = a.clone().requires_grad_(), b.clone().requires_grad_()
    symmetric_kl(a1, b1).backward()
    a2, b2 = a.double().requires_grad_(), b.double().requires_grad_()
    plain_sym_kl(a2, b2).mean().backward()
    torch.testing.assert_close(a1.grad.double(), a2.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b1.grad.double(), b2.grad, rtol=1e-5, atol=1e-7)


def test_rdrop_loss_is_mean_ce_plus_alpha_kl():
    g = torch.Generator().manual_seed(2)
    l1, l2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t = torch.randint(0, 4, (6,), generator=g)
    expected = (
        0.5 * (F.cross_entropy(l1, t) + F.cross_entropy(l2, t)) + 3.0 * plain_sym_kl(l1, l2).mean()
    )
    torch.testing.assert_close(
        rdrop_loss(l1, l2, t, alpha=3.0).double(), expected.double(), rtol=1e-5, atol=1e-6
    )
    ce_only = rdrop_loss(l1, l2, t, alpha=0.0)
    torch.testing.assert_close(ce_only, 0.5 * (F.cross_entropy(l1, t) + F.cross_entropy(l2, t)))


def test_padding_mask_ignores_pads_in_kl_and_ce():
    g = torch.Generator().manual_seed(3)
    l1, l2 = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    t = torch.randint(0, 4, (3, 5), generator=g)
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    real = mask.bool()
    kl = symmetric_kl(l1, l2, mask)
    torch.testing.assert_close(
        kl.double(), plain_sym_kl(l1[real], l2[real]).mean(), rtol=1e-5, atol=1e-7
    )
    loss = rdrop_loss(l1, l2, t, 2.0, mask=mask)
    expected = (
        0.5 * (F.cross_entropy(l1[real], t[real]) + F.cross_entropy(l2[real], t[real]))
        + 2.0 * plain_sym_kl(l1[real], l2[real]).mean()
    )
    torch.testing.assert_close(loss.double(), expected.double(), rtol=1e-5, atol=1e-6)
    # anything at the pads changes nothing
    l1b, l2b, tb = l1.clone(), l2.clone(), t.clone()
    l1b[~real] = 50.0
    l2b[~real] = -50.0
    tb[~real] = 1
    assert torch.equal(rdrop_loss(l1b, l2b, tb, 2.0, mask=mask), loss)


# ------------------------------------------------------------------ both forms, in Tricks
def _step(model, batch, mode, alpha=1.0, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return Tricks([RDrop(alpha, mode, **kw)]).step(model, opt, batch, row_loss_fn, boundary=False)


@pytest.mark.parametrize("token_level", [False, True])
def test_two_pass_and_duplicate_give_the_same_loss_and_grads(token_level):
    torch.manual_seed(0)
    a = RowNoiseNet()
    b = copy.deepcopy(a)  # same weights, generator in the same state
    batch = row_batch(t=5 if token_level else None)
    sa, sb = _step(a, batch, "two_pass", 2.0), _step(b, batch, "duplicate", 2.0)
    torch.testing.assert_close(sa.loss, sb.loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sa.logits, sb.logits)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-6)
    # and both equal the plain formula on the two passes' logits (same masks again)
    c = copy.deepcopy(a)
    c.gen.manual_seed(0)
    l1, l2 = c(batch["x"]), c(batch["x"])
    kl = plain_sym_kl(l1.detach(), l2.detach()).mean()
    assert kl > 1e-3  # the two passes really differ
    ce = 0.5 * (
        row_loss_fn(nn.Identity(), {"x": l1, "labels": batch["labels"]})[0]
        + row_loss_fn(nn.Identity(), {"x": l2, "labels": batch["labels"]})[0]
    )
    torch.testing.assert_close(
        sa.loss.double(), ce.detach().double() + 2.0 * kl, rtol=1e-5, atol=1e-6
    )


def test_rdrop_trick_with_padding_mask_key():
    torch.manual_seed(0)
    model = RowNoiseNet()
    ref = copy.deepcopy(model)
    batch = row_batch(b=4, t=6)
    batch["attention_mask"] = torch.ones(4, 6, dtype=torch.long)
    batch["attention_mask"][1, 2:] = 0
    batch["labels"][1, 2:] = -100
    state = _step(model, batch, "two_pass", 1.5, mask_key="attention_mask")
    l1, l2 = ref(batch["x"]), ref(batch["x"])
    expected = rdrop_loss(l1, l2, batch["labels"], 1.5, mask=batch["attention_mask"])
    torch.testing.assert_close(state.loss, expected.detach())
    with pytest.raises(ValueError, match="padding mask"):
        _step(model, batch, "two_pass", mask_key="pad_mask")


@pytest.mark.parametrize("mode", ["two_pass", "duplicate"])
def test_rdrop_trick_under_accumulation_matches_manual_loop(mode):
    torch.manual_seed(0)
    a = TinyTextClassifier(dropout=0.2)
    b = copy.deepcopy(a)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    tricks = Tricks([RDrop(alpha=4.0, mode=mode)], accumulate=2)
    for step in range(2):
        micro = split_batch(make_batch(n=8, seed=step), 2)
        for i, mb in enumerate(micro):
            torch.manual_seed(100 * step + i)
            tricks.step(a, opt_a, mb, loss_fn)
        for i, mb in enumerate(micro):  # the same by hand
            torch.manual_seed(100 * step + i)
            if mode == "two_pass":
                (ce1, l1), (ce2, l2) = loss_fn(b, mb), loss_fn(b, mb)
                ce = 0.5 * (ce1 + ce2)
            else:
                ce, logits = loss_fn(b, duplicate_batch(mb))
                l1, l2 = logits.chunk(2)
            ((ce + 4.0 * symmetric_kl(l1, l2)) / 2).backward()
        opt_b.step()
        opt_b.zero_grad()
    assert tricks.state.step == 2
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)


def test_rdrop_wraps_a_loss_swap():
    # RDrop (order LOSS_WRAP) is outside Focal (order LOSS): both passes use the focal loss
    torch.manual_seed(0)
    model = RowNoiseNet()
    ref = copy.deepcopy(model)
    batch = row_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = Tricks([Focal(2.0), RDrop(1.0)]).step(model, opt, batch, row_loss_fn)
    l1, l2 = ref(batch["x"]), ref(batch["x"])
    expected = 0.5 * (
        focal_loss(l1, batch["labels"]) + focal_loss(l2, batch["labels"])
    ) + symmetric_kl(l1, l2)
    torch.testing.assert_close(state.loss, expected.detach())


# ------------------------------------------------------------------ composition with FGM
class TinyFGM(Trick):
    """FGM written out: perturb the whole embedding by eps·g/‖g‖, run the closure, restore.
    Records what the closure saw so the test can recompute it."""

    order = Order.ADVERSARIAL

    def __init__(self, embedding: nn.Embedding, eps: float = 0.5):
        self.emb, self.eps = embedding, eps

    def after_backward(self, closure, state):
        w = self.emb.weight
        backup = w.detach().clone()
        with torch.no_grad():
            w.add_(self.eps * w.grad / w.grad.norm())
        self.seen_weight, self.seen_rng = w.detach().clone(), torch.get_rng_state()
        try:
            self.closure_loss = closure()
        finally:
            with torch.no_grad():
                w.copy_(backup)


@pytest.mark.parametrize("mode", ["two_pass", "duplicate"])
def test_adversarial_closure_runs_the_rdrop_loss(mode):
    torch.manual_seed(0)
    model = TinyTextClassifier(dropout=0.3)
    ref = copy.deepcopy(model)
    calls = collections.Counter()

    def counting_loss_fn(m, b):
        calls[len(b["labels"])] += 1
        return loss_fn(m, b)

    fgm = TinyFGM(model.embed)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = make_batch()
    clean = model.embed.weight.detach().clone()
    Tricks([fgm, RDrop(2.0, mode)]).step(model, opt, batch, counting_loss_fn)
    assert torch.equal(model.embed.weight, clean)  # restored after the closure
    assert calls == ({8: 4} if mode == "two_pass" else {16: 2})  # main chain + closure
    ref.embed.weight.data.copy_(fgm.seen_weight)
    torch.set_rng_state(fgm.seen_rng)
    if mode == "two_pass":
        (ce1, l1), (ce2, l2) = loss_fn(ref, batch), loss_fn(ref, batch)
        ce = 0.5 * (ce1 + ce2)
    else:
        ce, logits = loss_fn(ref, duplicate_batch(batch))
        l1, l2 = logits.chunk(2)
    kl = symmetric_kl(l1, l2)
    assert kl > 1e-4
    torch.testing.assert_close(fgm.closure_loss, (ce + 2.0 * kl).detach())


def test_rdrop_with_danlu_fgm_matches_manual_attack():
    adversarial = pytest.importorskip("danlu.adversarial")
    FGM = getattr(adversarial, "FGM", None)
    if FGM is None:
        pytest.skip("danlu.adversarial.FGM not available")
    torch.manual_seed(0)
    a = TinyTextClassifier(dropout=0.3)
    b = copy.deepcopy(a)
    batch = make_batch()

    def rdrop(m):
        (ce1, l1), (ce2, l2) = loss_fn(m, batch), loss_fn(m, batch)
        return 0.5 * (ce1 + ce2) + 2.0 * symmetric_kl(l1, l2)

    torch.manual_seed(7)
    opt = torch.optim.SGD(a.parameters(), lr=0.0)
    Tricks([FGM(a, eps=0.5), RDrop(2.0)]).step(a, opt, batch, loss_fn, boundary=False)
    torch.manual_seed(7)
    rdrop(b).backward()
    fgm_b = FGM(b, eps=0.5)
    with fgm_b.perturbed():
        rdrop(b).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


# ------------------------------------------------------------------ helpers and errors
def test_duplicate_batch_structures_and_no_mutation():
    Pair = collections.namedtuple("Pair", "x y")
    x = torch.arange(3)
    batch = {"a": x, "nested": [Pair(x, 5), (x, torch.tensor(2.0))], "s": "keep"}
    out = duplicate_batch(batch)
    assert torch.equal(out["a"], torch.tensor([0, 1, 2, 0, 1, 2]))
    assert isinstance(out["nested"][0], Pair) and out["nested"][0].y == 5
    assert torch.equal(out["nested"][1][1], torch.tensor(2.0))  # 0-d kept
    assert out["s"] == "keep" and torch.equal(batch["a"], torch.arange(3))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="alpha .* >= 0"):
        RDrop(alpha=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        rdrop_loss(
            torch.zeros(2, 3),
            torch.zeros(2, 3),
            torch.zeros(2, dtype=torch.long),
            alpha=float("inf"),
        )
    with pytest.raises(ValueError, match="mode must be"):
        RDrop(mode="twice")
    with pytest.raises(ValueError, match="same shape"):
        symmetric_kl(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="mask must have"):
        symmetric_kl(torch.zeros(2, 4, 3), torch.zeros(2, 4, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="one class index per row"):
        rdrop_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"return \(loss, logits\)"):
        Tricks([RDrop()]).step(model, opt, make_batch(), lambda m, b: loss_fn(m, b)[0])
