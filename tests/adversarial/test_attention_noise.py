"""Attention-probability noise against references that perturb the probabilities by hand:
a custom attention function registered through transformers' AttentionInterface (tiny
BERT) and a hand-written encoder layer (nn.TransformerEncoderLayer)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _adversarial_models import batch, loss_fn, tiny_bert
from torch import nn

from danlu import Tricks
from danlu.adversarial import AttentionNoise

DELTAS: dict[int, torch.Tensor] = {}


def _ref_attention(module, q, k, v, attention_mask, scaling=None, dropout=0.0, **kw):
    w = torch.matmul(q, k.transpose(2, 3)) * scaling  # (no padding in these batches)
    p = torch.softmax(w, dim=-1) + DELTAS[module.layer_idx]
    return torch.matmul(p, v).transpose(1, 2).contiguous(), p


def _fgm_noise(grads, eps):
    return {i: (eps * g / g.norm()).detach() for i, g in grads.items()}


def _reference_bert(model, b, eps):
    from transformers import AttentionInterface

    AttentionInterface.register("danlu_test_attention_noise", _ref_attention)
    model.config._attn_implementation = "danlu_test_attention_noise"
    n, h, seq = b["input_ids"].shape[0], model.config.num_attention_heads, b["input_ids"].shape[1]
    zeros = {i: torch.zeros(n, h, seq, seq, dtype=torch.float64, requires_grad=True)
             for i in range(model.config.num_hidden_layers)}
    DELTAS.update(zeros)
    loss_fn(model, b)[0].backward()
    DELTAS.update(_fgm_noise({i: z.grad for i, z in zeros.items()}, eps))
    loss_fn(model, b)[0].backward()
    return {name: p.grad for name, p in model.named_parameters()}


def test_hf_bert_drop_in_matches_reference():
    model = tiny_bert().double()
    expected = _reference_bert(copy.deepcopy(model), batch(), eps=0.5)
    noise = AttentionNoise(model, eps=0.5)
    with noise.recording():
        loss = loss_fn(model, batch())[0]
    loss.backward()
    with noise.perturbed():
        adv = loss_fn(model, batch())[0]
    adv.backward()
    assert adv > loss  # an ascent direction
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=0, atol=1e-10, msg=name)


def test_hf_bert_trick_matches_reference():
    model = tiny_bert().double()
    ref = copy.deepcopy(model)
    expected = _reference_bert(ref, batch(), eps=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Tricks([AttentionNoise(model, eps=0.5)]).step(model, opt, batch(), loss_fn)
    with torch.no_grad():
        for p, (name, q) in zip(model.parameters(), ref.named_parameters()):
            torch.testing.assert_close(p, q - 0.1 * expected[name], rtol=0, atol=1e-10, msg=name)


def test_recording_leaves_the_forward_unchanged_with_padding():
    model = tiny_bert()
    b = batch()
    b["attention_mask"][:3, 4:] = 0
    plain = loss_fn(model, b)[1]
    noise = AttentionNoise(model)
    with noise.recording():
        recorded = loss_fn(model, b)[1]
    assert torch.equal(plain, recorded)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in noise.modules)


class MHAClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(100, 16)
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask=None, delta=None):
        x = self.emb(input_ids)
        h = self.layer(x) if delta is None else _ref_layer(self.layer, x, delta)
        return self.head(h.mean(1))


def _ref_layer(layer, x, delta):
    """nn.TransformerEncoderLayer (post-LN, relu, no dropout) written out, with ``delta``
    added to the attention probabilities."""
    mha, (n, seq, e) = layer.self_attn, x.shape
    hd = e // mha.num_heads
    q, k, v = (t.view(n, seq, mha.num_heads, hd).transpose(1, 2)
               for t in F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1))
    p = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), -1) + delta
    a = mha.out_proj((p @ v).transpose(1, 2).reshape(n, seq, e))
    x = layer.norm1(x + a)
    return layer.norm2(x + layer.linear2(F.relu(layer.linear1(x))))


def test_multihead_attention_matches_hand_written_layer():
    torch.manual_seed(0)
    model = MHAClassifier().double()
    ref = copy.deepcopy(model)
    b = batch()
    zero = torch.zeros(8, 2, 7, 7, dtype=torch.float64, requires_grad=True)
    F.cross_entropy(ref(b["input_ids"], delta=zero), b["labels"]).backward()
    r = _fgm_noise({0: zero.grad}, 0.3)[0]
    F.cross_entropy(ref(b["input_ids"], delta=r), b["labels"]).backward()
    noise = AttentionNoise(model, eps=0.3)
    with noise.recording():
        loss = loss_fn(model, b)[0]
    loss.backward()
    with noise.perturbed():
        loss_fn(model, b)[0].backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=name)


def test_errors():
    with pytest.raises(ValueError, match="eager"):
        AttentionNoise(tiny_bert(attn="sdpa"))
    with pytest.raises(ValueError, match="no attention module"):
        AttentionNoise(nn.Linear(3, 2))
    model = tiny_bert()
    with pytest.raises(ValueError, match="eps"):
        AttentionNoise(model, eps=0)
    with pytest.raises(RuntimeError, match="recording"), AttentionNoise(model).perturbed():
        pass


@pytest.mark.parametrize("amp", [None, "fp16", "bf16"])
def test_trick_trains_under_accumulation_and_amp(amp):
    torch.manual_seed(0)
    model = MHAClassifier()
    before = copy.deepcopy(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tricks = Tricks([AttentionNoise(model, eps=0.5)], accumulate=2, amp=amp)
    for i in range(4):
        state = tricks.step(model, opt, batch(seed=i), loss_fn)
        assert torch.isfinite(state.loss)
    assert tricks.state.step == 2
    after = model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert not torch.equal(before["layer.self_attn.in_proj_weight"],
                           after["layer.self_attn.in_proj_weight"])
