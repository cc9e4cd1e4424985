"""Drop path / stochastic depth: per-sample masks, preserved expectation, eval identity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from danlu.nn import DropPath, add_drop_path, drop_path


def test_mask_is_per_sample_and_scaled():
    x = torch.randn(64, 5, 7) + 3.0
    y = drop_path(x, 0.4, generator=torch.Generator().manual_seed(0))
    ratio = y / x
    for row in ratio:  # a whole example is either dropped or scaled by 1/(1-p)
        assert torch.allclose(row, torch.zeros_like(row)) or torch.allclose(
            row, torch.full_like(row, 1 / 0.6)
        )
    dropped = (ratio.flatten(1) == 0).all(1)
    assert 0 < int(dropped.sum()) < 64


def test_expected_value_is_preserved():
    x = torch.ones(40_000, 2)
    g = torch.Generator().manual_seed(1)
    y = drop_path(x, 0.3, generator=g)
    # mean of 40k Bernoulli(0.7)/0.7 draws: std = sqrt(0.3/0.7)/200 ≈ 0.0033
    assert abs(y.mean().item() - 1.0) < 0.015
    assert abs((y[:, 0] == 0).float().mean().item() - 0.3) < 0.01
    y = drop_path(x, 0.3, generator=g, scale_by_keep=False)
    assert set(y.unique().tolist()) == {0.0, 1.0}


def test_identity_in_eval_and_for_p0():
    x = torch.randn(4, 3)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0) is x
    module = DropPath(0.5).eval()
    assert module(x) is x


def test_generator_makes_it_reproducible_without_touching_global_rng():
    x = torch.randn(32, 4)
    state = torch.get_rng_state()
    a = drop_path(x, 0.5, generator=torch.Generator().manual_seed(3))
    b = drop_path(x, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_gradient_is_the_mask():
    x = torch.randn(16, 3, requires_grad=True)
    y = drop_path(x, 0.25, generator=torch.Generator().manual_seed(4))
    y.sum().backward()
    kept = (y.detach() != 0).all(1)
    expected = kept.float().unsqueeze(1).expand(16, 3) / 0.75
    torch.testing.assert_close(x.grad, expected)


def test_residual_block_train_and_eval():
    torch.manual_seed(0)
    branch = nn.Linear(6, 6)
    dp = DropPath(0.5)
    x = torch.randn(200, 6)
    out = x + dp(branch(x))
    same = torch.isclose(out, x).all(1)
    assert 50 < int(same.sum()) < 150  # about half the examples skipped the branch
    dp.eval()
    torch.testing.assert_close(x + dp(branch(x)), x + branch(x))
    assert repr(dp) == "DropPath(p=0.5)"


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5, True])
def test_p_out_of_range_raises(p):
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        drop_path(torch.ones(2, 2), p)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        DropPath(p)


def _tiny_bert(layers=3):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return transformers.BertModel(cfg)


def test_add_drop_path_to_hf_bert():
    import copy

    model = _tiny_bert()
    plain = copy.deepcopy(model)
    assert add_drop_path(model, 0.2) == pytest.approx([0.0, 0.1, 0.2])
    rates = [m.p for m in model.modules() if isinstance(m, DropPath)]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2, 0.2])  # attention + FFN per layer
    ids = torch.randint(1, 40, (4, 6))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(ids).last_hidden_state, plain(ids).last_hidden_state)
    with pytest.raises(ValueError, match="called twice"):
        add_drop_path(model, 0.2)
    with pytest.raises(ValueError, match="no BERT-style encoder"):
        add_drop_path(nn.Linear(2, 2), 0.1)


def test_add_drop_path_drops_whole_branches_in_training():
    model = _tiny_bert(layers=2)
    add_drop_path(model, 0.999999, linear=False)  # every branch dropped (for this seed)
    model.train()
    ids = torch.randint(1, 40, (4, 6))
    torch.manual_seed(1)
    out = model(ids).last_hidden_state
    # with both branches dropped, each layer is LayerNorm_ffn(LayerNorm_attn(h))
    h = model.embeddings(input_ids=ids)
    for layer in model.encoder.layer:
        h = layer.output.LayerNorm(layer.attention.output.LayerNorm(h))
    torch.testing.assert_close(out, h)
