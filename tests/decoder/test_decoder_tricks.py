"""Tricks that claim to work on any Hugging Face model, on one encoder (tiny BERT) and one
decoder (tiny GPT-2): embedding and layer discovery, layer decay, FGM, FreeLB,
embedding and manifold mixup, attention noise; and causal-LM fine-tuning with token-level losses (label smoothing and
focal with ignore_index, R-Drop with a padding mask) against hand-written references."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import embeds_loss, make_batch, tiny_bert, tiny_gpt2

from danlu.adversarial import FGM, AttentionNoise, FreeLB, find_embedding
from danlu.core import State
from danlu.data.mixup import EmbeddingMixup, ManifoldMixup
from danlu.loss import Focal, LabelSmoothing, RDrop
from danlu.optim import find_layer_list, layer_decay_groups

pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")

ARCHS = {
    "bert": (tiny_bert, "bert.embeddings.word_embeddings", "bert.encoder.layer"),
    "gpt2": (tiny_gpt2, "transformer.wte", "transformer.h"),
}


def hf_loss(model, batch):
    out = model(**batch)
    return out.loss, out.logits


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_layers_and_layer_decay(arch):
    build, emb_name, layers_name = ARCHS[arch]
    model = build()
    modules = dict(model.named_modules())
    assert find_embedding(model) is modules[emb_name].weight
    name, layers = find_layer_list(model)
    assert name == layers_name and len(layers) == 2
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.0)
    depth = {n: g["depth"] for g in groups for n in g["param_names"]}
    for n, d in depth.items():  # the documented rule: embeddings 0, layer i -> i+1, rest 3
        if n.startswith(layers_name + "."):
            assert d == int(n[len(layers_name) + 1 :].split(".")[0]) + 1, n
        elif n.startswith(emb_name) or ".wpe." in n or ".embeddings." in n:
            assert d == 0, n
        else:
            assert d == 3, n  # pooler / classifier / GPT-2's final ln_f and score head
    assert all(g["lr"] == 0.5 ** (3 - g["depth"]) for g in groups)


@pytest.mark.parametrize("arch", ARCHS)
def test_fgm_weight_mode_on_encoder_and_decoder(arch):
    model = ARCHS[arch][0]()
    batch = make_batch(seed=1)
    hf_loss(model, batch)[0].backward()
    weight = find_embedding(model)
    before, grad = weight.detach().clone(), weight.grad.clone()
    fgm = FGM(model, eps=0.5)
    clean = hf_loss(model, batch)[0].item()
    with fgm.perturbed():
        expected = before + 0.5 * grad / grad.norm()  # rows without a gradient stay put
        torch.testing.assert_close(weight.detach(), expected, atol=1e-6, rtol=0)
        assert hf_loss(model, batch)[0].item() != clean
    assert torch.equal(weight, before)


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_mixup_matches_mixed_inputs_embeds(arch):
    model = ARCHS[arch][0]()
    batch = make_batch(seed=2)
    trick = EmbeddingMixup(alpha=0.4, seed=3)
    state = State(model=model)
    batch = trick.on_batch(batch, state)
    loss, logits = trick.compute_loss(lambda b: hf_loss(model, b), batch, state)
    emb = model.get_input_embeddings()(batch["input_ids"])
    lam, index = trick.lam, trick.index
    mixed = lam * emb + (1 - lam) * emb[index]
    ref = model(inputs_embeds=mixed, attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(logits, ref, atol=1e-6, rtol=0)
    y = batch["labels"]
    ref_loss = lam * F.cross_entropy(ref, y) + (1 - lam) * F.cross_entropy(ref, y[index])
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_freelb_matches_hand_ascent_on_inputs_embeds(arch):
    model = ARCHS[arch][0]()
    ref = copy.deepcopy(model)
    batch = make_batch(seed=4)
    FreeLB(model, steps=2, alpha=0.1, init_mag=0.0).run(lambda: hf_loss(model, batch)[0])
    clean, emb = embeds_loss(ref, batch)  # step 1 at delta 0, step 2 one ascent further
    (clean / 2).backward()
    g = emb.grad
    delta = 0.1 * g / g.reshape(len(g), -1).norm(dim=1).view(-1, 1, 1)  # per-example norm
    (embeds_loss(ref, batch, delta)[0] / 2).backward()
    ref_params = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[n].grad, atol=1e-6, rtol=0, msg=n)


@pytest.mark.parametrize("arch", ARCHS)
def test_manifold_mixup_mixes_the_chosen_block(arch):
    model = ARCHS[arch][0]()
    layers = model.get_submodule(ARCHS[arch][2])
    out0, in1 = [], []
    layers[0].register_forward_hook(
        lambda m, a, o: out0.append(o[0] if isinstance(o, tuple) else o)
    )
    layers[1].register_forward_pre_hook(lambda m, a: in1.append(a[0]))
    trick = ManifoldMixup(ARCHS[arch][2], alpha=0.5, choices=[0], seed=5)
    state = State(model=model)
    batch = trick.on_batch(make_batch(seed=5), state)
    trick.compute_loss(lambda b: hf_loss(model, b), batch, state)
    lam, index = trick.lam, trick.index  # block 0's output (seen before the mix) is mixed
    torch.testing.assert_close(in1[0], lam * out0[0] + (1 - lam) * out0[0][index], atol=1e-6,
                               rtol=0)  # fmt: skip


def test_attention_noise_reaches_bert_and_names_the_gap_on_gpt2():
    bert = tiny_bert(attn_implementation="eager")
    assert len(AttentionNoise(bert).modules) == 2  # one per layer
    with pytest.raises(ValueError, match="found no attention module"):
        AttentionNoise(tiny_gpt2(attn_implementation="eager"))  # GPT2Attention: not supported


def _lm_batch(seed=0, n=4, seq=8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 50, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[0, 5:] = 0  # right padding on two rows
    mask[1, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _lm_loss(model, batch):  # next-token prediction: position t predicts token t + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shifted = logits[:, :-1]
    target = batch["labels"][:, 1:]
    return F.cross_entropy(shifted.transpose(1, 2), target, ignore_index=-100), shifted


def _shifted_labels(batch):
    return batch["labels"][:, 1:]


def test_causal_lm_label_smoothing_and_focal_with_ignore_index():
    model = tiny_gpt2(lm=True)
    batch = _lm_batch()
    forward = lambda b: _lm_loss(model, b)  # noqa: E731
    _, logits = forward(batch)
    target = _shifted_labels(batch)
    keep = target != -100
    flat_logits, flat_target = logits[keep], target[keep]  # only the real next tokens
    assert 0 < keep.sum() < keep.numel()

    smooth, _ = LabelSmoothing(0.1, target_fn=_shifted_labels).compute_loss(forward, batch, State())
    ref = F.cross_entropy(flat_logits, flat_target, label_smoothing=0.1)
    torch.testing.assert_close(smooth, ref, atol=1e-6, rtol=0)

    focal, _ = Focal(gamma=2.0, target_fn=_shifted_labels).compute_loss(forward, batch, State())
    logp = flat_logits.log_softmax(-1).gather(1, flat_target[:, None]).squeeze(1)
    ref = (-((1 - logp.exp()) ** 2) * logp).mean()  # FL = -(1 - p)^2 log p over kept tokens
    torch.testing.assert_close(focal, ref, atol=1e-6, rtol=0)


def test_causal_lm_rdrop_with_padding_mask():
    model = tiny_gpt2(lm=True, resid_pdrop=0.3)  # dropout makes the two passes differ
    model.train()
    batch = _lm_batch(seed=1)
    trick = RDrop(alpha=2.0, mask_fn=lambda b: b["attention_mask"][:, 1:])
    forward = lambda b: _lm_loss(model, b)  # noqa: E731
    torch.manual_seed(7)
    loss, _ = trick.compute_loss(forward, batch, State())
    torch.manual_seed(7)  # the same dropout masks, by hand
    (l1, z1), (l2, z2) = forward(batch), forward(batch)
    p1, p2 = z1.log_softmax(-1), z2.log_softmax(-1)
    kl = 0.5 * ((p1.exp() * (p1 - p2)).sum(-1) + (p2.exp() * (p2 - p1)).sum(-1))
    m = batch["attention_mask"][:, 1:].float()
    ref = 0.5 * (l1 + l2) + 2.0 * (kl * m).sum() / m.sum()  # pads count in neither term
    assert not torch.equal(z1, z2)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=0)


def test_fgm_on_a_tied_lm_embedding_warns_in_weight_mode_and_hook_mode_spares_the_head():
    model = tiny_gpt2(lm=True)
    assert model.lm_head.weight is model.transformer.wte.weight
    with pytest.warns(UserWarning, match="tied to Linear.*mode='hook'"):
        FGM(model, eps=0.5)
    batch = _lm_batch(seed=3)
    fgm = FGM(model, eps=0.5, mode="hook")
    loss, _ = _lm_loss(model, batch)
    loss.backward()
    weight = model.transformer.wte.weight.detach().clone()
    with fgm.perturbed():  # the input is perturbed, the tied output layer is not
        assert torch.equal(model.lm_head.weight, weight)
        adv, _ = _lm_loss(model, batch)
    assert adv.item() != loss.item()
