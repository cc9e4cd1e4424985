"""Mixup composed with R-Drop and loss swaps inside Tricks, against a hand-written loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, make_batch

from danlu import Tricks
from danlu.data.mixup import EmbeddingMixup, sample_lambda, sample_permutation
from danlu.loss import Focal, RDrop, focal_loss


def _loss_fn(model, batch):
    logits = model(batch["input_ids"], batch["attention_mask"])
    return F.cross_entropy(logits, batch["labels"]), logits


def _mixed_forward(model, ids, lam, index):
    """TinyTextClassifier's forward with the embedding output mixed, written out."""
    e = model.embed(ids)
    h = model.drop(lam * e + (1 - lam) * e[index])
    pooled = h.mean(1)  # no padding in make_batch
    return model.head(torch.tanh(model.hidden(pooled)))


def _sym_kl(a, b):
    pa, pb = a.log_softmax(-1), b.log_softmax(-1)
    kl_ab = (pa.exp() * (pa - pb)).sum(-1).mean()
    kl_ba = (pb.exp() * (pb - pa)).sum(-1).mean()
    return 0.5 * (kl_ab + kl_ba)


@pytest.mark.parametrize("alpha_kl", [0.0, 4.0])
def test_rdrop_runs_both_passes_on_the_same_mix_and_keeps_its_kl(alpha_kl):
    torch.manual_seed(0)
    model = TinyTextClassifier(dropout=0.3).double()
    ref = copy.deepcopy(model)
    batch = make_batch(seed=3)
    # the list order is deliberately "wrong": Tricks sorts RDrop (LOSS_WRAP) outside Mixup (MIX)
    tricks = Tricks([EmbeddingMixup(alpha=0.4, seed=7), RDrop(alpha=alpha_kl)])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(123)
    state = tricks.step(model, opt, batch, _loss_fn)

    g = torch.Generator().manual_seed(7)
    lam, index = sample_lambda(0.4, g), sample_permutation(8, g)
    y = batch["labels"]
    torch.manual_seed(123)
    z1 = _mixed_forward(ref, batch["input_ids"], lam, index)
    z2 = _mixed_forward(ref, batch["input_ids"], lam, index)

    def mixed_ce(z):
        return lam * F.cross_entropy(z, y) + (1 - lam) * F.cross_entropy(z, y[index])

    expected = 0.5 * (mixed_ce(z1) + mixed_ce(z2)) + alpha_kl * _sym_kl(z1, z2)
    torch.testing.assert_close(state.loss, expected.detach(), atol=1e-12, rtol=0)
    if alpha_kl:
        assert _sym_kl(z1, z2) > 1e-4, "dropout must make the passes differ for this test"
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    expected.backward()
    ref_opt.step()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0, msg=n)


def test_loss_swap_inside_mixup_is_refused_with_the_fix_named():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match=r"EmbeddingMixup.*Focal.*silently dropped.*loss_from_logits"):
        Tricks([EmbeddingMixup(), Focal(gamma=2.0)])
    # the supported way: mixup computes the focal loss itself
    tricks = Tricks([EmbeddingMixup(loss_from_logits=lambda z, y: focal_loss(z, y, 2.0))])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert torch.isfinite(tricks.step(model, opt, make_batch(), _loss_fn).loss)


def test_duplicate_rdrop_with_mixup_fails_clearly():
    model = TinyTextClassifier()
    tricks = Tricks([EmbeddingMixup(), RDrop(alpha=1.0, mode="duplicate")])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"16 examples in compute_loss but had 8.*two_pass"):
        tricks.step(model, opt, make_batch(), _loss_fn)
