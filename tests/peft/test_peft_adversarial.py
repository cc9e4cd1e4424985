"""Adversarial tricks on LoRA models (frozen base embedding): FGM and PGD in hook mode
perturb the embedding output (checked against the same attack written by hand through
``inputs_embeds``), leave the frozen weight bit-identical, and weight mode refuses a frozen
embedding pointing to the hook mode; FreeLB, AWP (on the adapters), R-Drop, focal, label
smoothing and embedding mixup run unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import embeds_loss, make_batch, split_batch, tiny_bert

import danlu
from danlu.adversarial import AWP, FGM, PGD, FreeLB, find_embedding
from danlu.core import State
from danlu.data.mixup import EmbeddingMixup
from danlu.loss import Focal, LabelSmoothing, RDrop

pytest.importorskip("peft", reason="peft is not installed (extra 'peft')")
pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
from _peft_models import hf_loss, lora_model, trainable  # noqa: E402


def _grads(model):
    return {n: p.grad.clone() for n, p in trainable(model).items()}


@pytest.mark.parametrize("arch", ["bert", "gpt2", "bert, full fine-tuning"])
def test_fgm_hook_mode_matches_hand_attack_and_keeps_frozen_weight(arch):
    full = arch.endswith("tuning")
    model = tiny_bert() if full else lora_model(arch)
    ref = copy.deepcopy(model)
    weight = find_embedding(model)
    frozen = weight.detach().clone()
    assert weight.requires_grad == full
    if not full:
        with pytest.raises(ValueError, match="mode='hook'"):
            FGM(model, eps=0.5)  # weight mode on a frozen embedding: refused, with the way out
    batch = make_batch(seed=3)
    fgm = FGM(model, eps=0.5, mode="hook")
    loss, _ = hf_loss(model, batch)
    loss.backward()
    assert fgm.attack() and fgm.attacked
    adv, _ = hf_loss(model, batch)
    adv.backward()
    fgm.restore()
    assert torch.equal(weight, frozen)  # never written
    assert (weight.grad is None) != full  # a frozen weight gets no gradient

    clean, emb = embeds_loss(ref, batch)  # the same attack by hand on the output
    clean.backward()
    r = 0.5 * emb.grad / emb.grad.norm()
    ref_adv, _ = embeds_loss(ref, batch, r)
    ref_adv.backward()
    torch.testing.assert_close(loss, clean, atol=1e-6, rtol=0)
    torch.testing.assert_close(adv, ref_adv, atol=1e-6, rtol=0)
    assert abs(adv.item() - loss.item()) > 1e-4  # the hook really changed the loss
    for n, g in _grads(ref).items():  # clean + adversarial gradients on the adapters
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-6, rtol=0)
    fgm.remove()
    assert torch.equal(hf_loss(model, batch)[0], loss)  # no hook left


def test_pgd_hook_mode_matches_hand_attack():
    model = lora_model("bert")
    ref = copy.deepcopy(model)
    batch = make_batch(seed=4)
    eps, alpha, steps = 0.3, 0.2, 3
    pgd = PGD(model, eps=eps, alpha=alpha, steps=steps, mode="hook")
    hf_loss(model, batch)[0].backward()
    pgd.run(lambda: hf_loss(model, batch)[0].backward())

    def project(d):
        return d * min(1.0, eps / d.norm().item())

    clean, emb = embeds_loss(ref, batch)
    clean.backward()  # the clean gradients stay; the inner passes only move delta
    delta = project(alpha * emb.grad / emb.grad.norm())
    for _ in range(steps - 1):  # K ascent steps: K - 1 inner passes, then the final one
        inner, leaf = embeds_loss(ref, batch, delta)
        (g,) = torch.autograd.grad(inner, leaf)
        delta = project(delta + alpha * g / g.norm())
    embeds_loss(ref, batch, delta)[0].backward()
    assert delta.norm() <= eps + 1e-6
    for n, g in _grads(ref).items():
        torch.testing.assert_close(dict(model.named_parameters())[n].grad, g, atol=1e-5, rtol=0)
    assert find_embedding(model).grad is None


def test_fgm_hook_mode_attacks_each_micro_batch_with_its_own_gradient():
    model, ref = lora_model("gpt2"), lora_model("gpt2")
    halves = split_batch(make_batch(seed=5), 2)
    opt = torch.optim.SGD(trainable(model).values(), lr=0.5)
    tricks = danlu.Tricks([FGM(model, eps=0.5, mode="hook")], accumulate=2)
    for half in halves:
        tricks.step(model, opt, half, hf_loss)
    fgm = FGM(ref, eps=0.5, mode="hook")  # by hand: each half attacked after its own backward
    for half in halves:
        (hf_loss(ref, half)[0] / 2).backward()
        with fgm.perturbed():
            (hf_loss(ref, half)[0] / 2).backward()
    torch.optim.SGD(trainable(ref).values(), lr=0.5).step()
    for n, p in trainable(model).items():
        torch.testing.assert_close(p, dict(ref.named_parameters())[n], atol=1e-6, rtol=0)


def test_freelb_awp_rdrop_losses_and_mixup_run_unchanged_on_lora():
    model = lora_model("bert", hidden_dropout_prob=0.2)
    weight = find_embedding(model)
    frozen = weight.detach().clone()
    before = {n: p.detach().clone() for n, p in trainable(model).items()}
    opt = torch.optim.SGD(trainable(model).values(), lr=0.1)
    for i, tricks in enumerate([[FreeLB(model, steps=2, alpha=0.1)],
                                [RDrop(alpha=1.0), Focal(gamma=2.0)],
                                [EmbeddingMixup(alpha=0.4, seed=0)],
                                [LabelSmoothing(0.1)],
                                [AWP(model, adv_lr=0.1, adv_eps=0.01)]]):  # fmt: skip
        st = danlu.Tricks(tricks).step(model, opt, make_batch(seed=10 + i), hf_loss)
        assert torch.isfinite(st.loss)
    assert torch.equal(weight, frozen)
    assert all(not torch.equal(p, before[n]) for n, p in trainable(model).items())

    # R-Drop around focal: the formula on the two passes' logits (same dropout masks)
    batch, y = make_batch(seed=20), make_batch(seed=20)["labels"]
    focal = Focal(gamma=2.0)
    inner = lambda b: focal.compute_loss(lambda b2: hf_loss(model, b2), b, State())  # noqa: E731
    torch.manual_seed(0)
    loss, _ = RDrop(alpha=1.0).compute_loss(inner, batch, State())
    torch.manual_seed(0)
    z1, z2 = hf_loss(model, batch)[1], hf_loss(model, batch)[1]
    p1, p2 = z1.log_softmax(-1), z2.log_softmax(-1)
    kl = 0.5 * ((p1.exp() - p2.exp()) * (p1 - p2)).sum(-1).mean()
    fl = [(-((1 - p.gather(1, y[:, None]).exp()) ** 2) * p.gather(1, y[:, None])).mean()
          for p in (p1, p2)]  # fmt: skip
    torch.testing.assert_close(loss, 0.5 * (fl[0] + fl[1]) + kl, atol=1e-6, rtol=0)
