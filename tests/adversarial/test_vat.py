"""VAT: the power iteration against the textbook one written in the test and against the
top eigenvector of the KL's Hessian; the term against a hand computation on the embedding
output; label-free, frozen embedding, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

import danlu
from danlu.adversarial import VAT, vat_direction


def _from_embeds(model, e, mask):
    m = mask.unsqueeze(-1).to(e.dtype)
    return model.head(torch.tanh(model.hidden((e * m).sum(1) / m.sum(1))))


def _kl(p_logits, q_logits):
    lp = p_logits.log_softmax(-1)
    return (lp.exp() * (lp - q_logits.log_softmax(-1))).sum(-1).mean()


def _unit(v):
    return v / v.flatten(1).norm(dim=1).view(-1, 1, 1)


def _logits(model, batch):  # reads no label, even on the labelled batch
    return model(batch["input_ids"], batch["attention_mask"])


def test_term_equals_textbook_vat():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    ref = copy.deepcopy(model)
    b = make_batch()
    vat = VAT(model, eps=0.8, xi=1e-2, power_iterations=2, logits_fn=_logits,
              generator=torch.Generator().manual_seed(7))  # fmt: skip
    term = vat.term(model, b)
    term.backward()
    # textbook VAT (Miyato et al.) on the embedding output, written out
    e = ref.embed(b["input_ids"])
    mask = b["attention_mask"]
    clean = _from_embeds(ref, e, mask).detach()
    d = _unit(torch.randn(e.shape, generator=torch.Generator().manual_seed(7)))
    for _ in range(2):
        r = (1e-2 * d).requires_grad_()
        (g,) = torch.autograd.grad(_kl(clean, _from_embeds(ref, e.detach() + r, mask)), r)
        d = _unit(g)
    ref_term = _kl(clean, _from_embeds(ref, e + 0.8 * d, mask))
    ref_term.backward()
    torch.testing.assert_close(term, ref_term, rtol=1e-5, atol=1e-7)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=n)


def test_direction_is_top_hessian_eigenvector():
    torch.manual_seed(1)
    model = TinyTextClassifier(dim=4).double()
    ids, mask = torch.tensor([[3, 7]]), torch.ones(1, 2)
    e = model.embed(ids).detach()
    clean = _from_embeds(model, e, mask).detach()
    hess = torch.autograd.functional.hessian(
        lambda r: _kl(clean, _from_embeds(model, e + r.view(1, 2, 4), mask)),
        torch.zeros(8, dtype=torch.float64),
    )
    vals, vecs = torch.linalg.eigh(hess)
    top = vecs[:, -1]
    got = vat_direction(
        lambda r: _from_embeds(model, e + r.double(), mask),
        clean,
        torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64),
        xi=1e-5,
        power_iterations=40,
    ).flatten()
    assert vals[-1] > 1.5 * vals[-2]  # a clear top eigenvalue: 40 iterations converge
    assert abs(float(got.double() @ top)) > 0.999


def test_trick_label_free_on_frozen_embedding_and_unlabelled():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    model.embed.weight.requires_grad_(False)
    unl = [{"input_ids": make_batch(seed=9)["input_ids"],
            "attention_mask": torch.ones(8, 6, dtype=torch.long)}]  # fmt: skip
    vat = VAT(model, unl, alpha=1.0, eps=1.0, logits_fn=_logits)
    tricks = danlu.Tricks([vat], accumulate=2, amp="bf16")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    w = model.embed.weight.clone()
    for i in range(2):
        st = tricks.step(model, opt, make_batch(seed=i), loss_fn)
        assert torch.isfinite(st.extra["vat"]) and float(st.extra["vat"]) > 0
    assert torch.equal(model.embed.weight, w) and not model.embed._forward_hooks
    assert vat.stream.passes == 1


def test_errors():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        VAT(model, eps=0.0)
    with pytest.raises(ValueError, match="xi must be a finite number > 0"):
        VAT(model, xi=-1.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        VAT(model, power_iterations=0)
    with pytest.raises(ValueError, match="empty"):
        VAT(model, unlabelled=[])
