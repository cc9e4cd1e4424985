"""Gaussian and NEFTune embedding-output noise against the formula written plainly, on a
frozen embedding, in eval mode, under accumulation and AMP, and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch

import danlu
from danlu.adversarial import GaussianNoise, NEFTune, gaussian_noise, neftune_noise


def _ref_loss(model, batch, noise):
    """TinyTextClassifier's forward with ``noise`` added to the embedding output."""
    h = model.embed(batch["input_ids"]) + noise
    m = batch["attention_mask"].unsqueeze(-1).to(h.dtype)
    logits = model.head(torch.tanh(model.hidden((h * m).sum(1) / m.sum(1))))
    return F.cross_entropy(logits, batch["labels"])


def test_neftune_scale_and_gaussian_against_formula():
    x = torch.randn(2, 5, 16)
    u = torch.empty(2, 5, 16).uniform_(-1, 1, generator=torch.Generator().manual_seed(4))
    got = neftune_noise(x, 10.0, torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, x + u * 10.0 / math.sqrt(5 * 16), rtol=0, atol=1e-6)
    assert float((got - x).abs().max()) <= 10.0 / math.sqrt(80)
    n = torch.empty(2, 5, 16).normal_(generator=torch.Generator().manual_seed(4))
    got = gaussian_noise(x, 0.3, torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, x + 0.3 * n, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls, kw", [(NEFTune, {"alpha": 5.0}), (GaussianNoise, {"std": 0.1})])
@pytest.mark.parametrize("frozen", [False, True])
def test_trick_equals_hand_loop(cls, kw, frozen):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    model.embed.weight.requires_grad_(not frozen)
    ref = copy.deepcopy(model)
    b = make_batch()
    tricks = danlu.Tricks([cls(model, generator=torch.Generator().manual_seed(1), **kw)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ref_opt = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], lr=0.5)
    g = torch.Generator().manual_seed(1)
    for _ in range(2):
        tricks.step(model, opt, b, loss_fn)
        shape = (8, 6, 16)
        if cls is NEFTune:
            noise = torch.empty(shape).uniform_(-1, 1, generator=g) * 5.0 / math.sqrt(6 * 16)
        else:
            noise = torch.empty(shape).normal_(generator=g) * 0.1
        _ref_loss(ref, b, noise).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)
    assert not model.embed._forward_hooks  # the hook exists only inside the step
    # eval mode: no noise
    trick = tricks.tricks[0]
    model.eval()
    with torch.no_grad():
        clean = model(b["input_ids"])
        with trick.noisy():
            assert torch.equal(model(b["input_ids"]), clean)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_accumulation(amp):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    tricks = danlu.Tricks([NEFTune(model, alpha=5.0)], accumulate=2, amp=amp)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.hidden.weight.detach().clone()
    for i in range(4):
        st = tricks.step(model, opt, make_batch(seed=i), loss_fn)
        assert torch.isfinite(st.loss)
    assert tricks.state.step == 2 and not torch.equal(model.hidden.weight, before)


def test_errors():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match="std must be a finite number > 0"):
        GaussianNoise(model, std=0.0)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        NEFTune(model, alpha=-1.0)
    with pytest.raises(ValueError, match=r"\(batch, length, dim\)"):
        neftune_noise(torch.zeros(3, 4), 1.0)
    g = torch.Generator().manual_seed(0)
    n = NEFTune(model, generator=g)
    sd = n.state_dict()
    g.manual_seed(5)
    n.load_state_dict(sd)
    assert torch.equal(g.get_state(), sd["generator"])
