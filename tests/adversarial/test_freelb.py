"""FreeLB against the authors' inputs_embeds loop, written out here for a tiny BERT."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _adversarial_models import batch, loss_fn, make
from helpers import assert_params_close

from danlu import Tricks
from danlu.adversarial import FreeLB, freelb_ascent


def reference_grads(model, b, steps, alpha, eps, init_mag, g):
    """The FreeLB loop of the paper's code (l2 norm) via inputs_embeds; draws the init
    from generator ``g``. Returns the parameter gradients it accumulated."""
    model.zero_grad()
    emb = model.bert.embeddings.word_embeddings
    ids, mask = b["input_ids"], b["attention_mask"]
    embeds = emb(ids)
    noise = torch.empty(embeds.shape, dtype=embeds.dtype).uniform_(-1, 1, generator=g)
    mag = init_mag / torch.sqrt((mask.sum(1) * embeds.size(-1)).to(embeds.dtype))
    delta = (noise * mask.unsqueeze(2) * mag.view(-1, 1, 1)).detach()
    for k in range(steps):
        delta.requires_grad_()
        logits = model(inputs_embeds=delta + embeds, attention_mask=mask).logits
        (F.cross_entropy(logits, b["labels"]) / steps).backward()
        if k == steps - 1:
            break
        dg = delta.grad.clone().detach()
        denorm = torch.clamp(torch.norm(dg.view(dg.size(0), -1), dim=1), min=1e-8)
        delta = (delta + alpha * dg / denorm.view(-1, 1, 1)).detach()
        if eps is not None:
            dn = torch.norm(delta.view(delta.size(0), -1), p=2, dim=1)
            exceed = (dn > eps).to(embeds)
            delta = (delta * (eps / dn * exceed + (1 - exceed)).view(-1, 1, 1)).detach()
        embeds = emb(ids)
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("eps", [None, 0.05])
def test_run_matches_reference_loop(eps):
    model, _ = make("bert")
    ref = copy.deepcopy(model)
    b = batch()
    freelb = FreeLB(model, steps=3, alpha=0.1, eps=eps, init_mag=0.2,
                    generator=torch.Generator().manual_seed(7))
    w = freelb.module.weight.detach().clone()
    loss = freelb.run(lambda: loss_fn(model, b)[0])
    expected = reference_grads(ref, b, 3, 0.1, eps, 0.2, torch.Generator().manual_seed(7))
    assert math.isfinite(float(loss))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=0, atol=1e-10, msg=n)
    assert torch.equal(freelb.module.weight.detach(), w) and not freelb.module._forward_hooks
    assert freelb.delta is None


def test_trick_form_matches_reference_with_accumulation():
    model, _ = make("bert")
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(3)
    tricks = Tricks([FreeLB(model, steps=2, alpha=0.1, init_mag=0.1, generator=gen)],
                    accumulate=2)
    ref_gen = torch.Generator().manual_seed(3)
    acc: dict = {}
    for i in range(4):
        b = batch(seed=i)
        state = tricks.step(model, opt, b, loss_fn)
        assert math.isfinite(float(state.loss))
        for n, gr in reference_grads(ref, b, 2, 0.1, None, 0.1, ref_gen).items():
            acc[n] = acc.get(n, 0) + gr / 2
        if i % 2 == 1:
            for n, p in ref.named_parameters():
                p.grad = acc[n]
            ref_opt.step()
            acc = {}
    assert_params_close(model, ref, atol=1e-9)


def test_ascent_step_and_bound():
    delta = torch.zeros(2, 1, 2)
    grad = torch.tensor([[[3.0, 4.0]], [[0.0, 2.0]]])
    out = freelb_ascent(delta, grad * 1024.0, alpha=1.0, eps=None)  # a loss scale cancels
    torch.testing.assert_close(out, torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]]))
    bounded = freelb_ascent(delta, grad, alpha=1.0, eps=0.5)
    torch.testing.assert_close(bounded.flatten(1).norm(dim=1), torch.tensor([0.5, 0.5]))
    nan = grad.clone()
    nan[0, 0, 0] = float("nan")
    assert torch.equal(freelb_ascent(delta, nan, 1.0, None), delta)


def test_gru_trick_runs_under_fp16_and_restores(tmp_path):
    model, _ = make("gru")
    model = model.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    freelb = FreeLB(model, steps=2, alpha=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: weights must stay identical
    tricks = Tricks([freelb], amp="fp16")
    for i in range(2):
        state = tricks.step(model, opt, batch(seed=i), loss_fn)
        assert math.isfinite(float(state.loss))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not freelb.module._forward_hooks and freelb.delta is None


def test_errors():
    model, _ = make("gru")
    with pytest.raises(ValueError, match="steps"):
        FreeLB(model, steps=0)
    with pytest.raises(ValueError, match="alpha"):
        FreeLB(model, alpha=0)
    with pytest.raises(ValueError, match="eps"):
        FreeLB(model, eps=-1.0)
    with pytest.raises(ValueError, match="init_mag"):
        FreeLB(model, init_mag=-0.1)
    with pytest.raises(RuntimeError, match="backward"):
        FreeLB(model).ascend()
