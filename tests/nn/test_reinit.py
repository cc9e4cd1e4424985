"""reinit_top_layers: the chosen blocks and head get exactly a freshly initialised model's
values under the same seed (independent of their previous values), everything else is
untouched, pretrained (``_is_hf_initialized``) weights are really re-drawn, tied weights and
the global RNG are left alone, and bad inputs raise."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_bert
from torch import nn

from danlu.nn import reinit_top_layers

transformers = pytest.importorskip("transformers")


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _is_top(name: str, n_layers: int, n: int) -> bool:
    """Written from the names, independently of the library: top-n blocks, pooler, head."""
    if name.startswith(("bert.pooler.", "classifier.")):
        return True
    parts = name.split(".")
    return "layer" in parts and int(parts[parts.index("layer") + 1]) >= n_layers - n


def test_chosen_layers_are_fresh_init_and_the_rest_untouched(tmp_path):
    # a "pretrained" model: trained away from its init, saved and loaded back with
    # from_pretrained (which marks its weights as initialised)
    model = tiny_bert(seed=0, num_hidden_layers=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.save_pretrained(tmp_path)
    a = transformers.BertForSequenceClassification.from_pretrained(tmp_path)
    b = tiny_bert(seed=1, num_hidden_layers=3)  # other weights, same architecture
    before = _snapshot(a)
    rng = torch.get_rng_state()

    names = reinit_top_layers(a, 2, seed=7)
    reinit_top_layers(b, 2, seed=7)

    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is not shifted
    after, other = _snapshot(a), _snapshot(b)
    params = {k for k, _ in a.named_parameters()}
    assert set(names) == {k for k in params if _is_top(k, 3, 2)}
    torch.manual_seed(7)  # the reference: a model built from scratch by transformers
    fresh = dict(transformers.BertForSequenceClassification(a.config).named_parameters())
    for k in params:
        if _is_top(k, 3, 2):
            # exactly a freshly initialised model's values under the same seed, whatever
            # the weights were before (another model re-initialised gives the same)
            assert torch.equal(after[k], fresh[k]), k
            assert torch.equal(after[k], other[k]), k
            assert not torch.equal(after[k], before[k]), k
        else:
            assert torch.equal(after[k], before[k]), k
    # HF's init: weights N(0, initializer_range), biases 0, LayerNorm 1/0
    std = a.config.initializer_range
    w = after["bert.encoder.layer.2.intermediate.dense.weight"]
    assert abs(w.std().item() - std) < 0.3 * std and abs(w.mean().item()) < 0.01
    assert torch.count_nonzero(after["bert.encoder.layer.1.output.dense.bias"]) == 0
    assert torch.equal(after["bert.encoder.layer.1.output.LayerNorm.weight"], torch.ones(16))
    assert torch.count_nonzero(after["classifier.bias"]) == 0
    # the "initialised" marks are back as they were
    assert all(getattr(p, "_is_hf_initialized", False) for p in a.bert.encoder.parameters())


def test_head_only_and_no_head():
    model = tiny_bert(seed=0)
    before = _snapshot(model)
    names = reinit_top_layers(model, 0, seed=0)
    assert set(names) == {
        k for k, _ in model.named_parameters() if k.startswith(("bert.pooler", "classifier"))
    }
    model = tiny_bert(seed=0)
    names = reinit_top_layers(model, 1, head=False, seed=0)
    assert names and all(".layer.1." in k for k in names)
    assert torch.equal(model.classifier.weight, before["classifier.weight"])


def test_tied_mlm_decoder_keeps_the_embedding():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32)  # fmt: skip
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(cfg)
    emb = mlm.get_input_embeddings().weight.detach().clone()
    names = reinit_top_layers(mlm, 1, seed=0)
    assert torch.equal(mlm.get_input_embeddings().weight, emb)
    assert mlm.cls.predictions.decoder.weight is mlm.get_input_embeddings().weight
    assert "cls.predictions.transform.dense.weight" in names


def test_plain_torch_encoder_uses_reset_parameters():
    torch.manual_seed(0)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2), num_layers=3, enable_nested_tensor=False
    )
    model = nn.Sequential(nn.Embedding(10, 8), enc, nn.Linear(8, 2))
    before = _snapshot(model)
    names = reinit_top_layers(model, 1, seed=3)
    changed = {k for k, v in _snapshot(model).items() if not torch.equal(v, before[k])}
    assert changed <= set(names)  # biases / norms already at their init values stay equal
    assert {k for k in names if k.endswith("weight") and "norm" not in k} <= changed
    assert {k.split(".")[2] for k in names if k.startswith("1.layers.")} == {"2"}
    assert "2.weight" in names  # the Linear head
    assert "1.layers.2.self_attn.in_proj_weight" in names  # MultiheadAttention._reset_parameters


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        (dict(n=3), ValueError, r"n must be in \[0, 2\]"),
        (dict(n=-1), ValueError, r"n must be in \[0, 2\]"),
        (dict(n=1.0), TypeError, "n must be an int"),
        (dict(n=0, head=False), ValueError, "re-initialises nothing"),
        (dict(n=1, init_fn=3), TypeError, "init_fn must be a callable"),
    ],
)
def test_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        reinit_top_layers(tiny_bert(), **kwargs)


def test_no_layer_list():
    with pytest.raises(ValueError, match="could not find the layer list"):
        reinit_top_layers(nn.Linear(3, 2), 1)


def test_docstring_example():
    import doctest

    import danlu.nn.reinit as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result


def test_user_head_outside_the_hf_model_gets_reset_parameters():
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32)  # fmt: skip

    class Wrapped(nn.Module):  # an HF encoder with the user's own head after it
        def __init__(self) -> None:
            super().__init__()
            self.enc, self.head = transformers.BertModel(cfg), nn.Linear(16, 2)

    model = Wrapped()
    names = reinit_top_layers(model, 1, seed=5)
    torch.manual_seed(5)
    fresh = transformers.BertModel(cfg)  # the reference for the HF part, then the head's draw
    head = nn.Linear(16, 2)
    for k in ("encoder.layer.1.attention.self.query.weight", "pooler.dense.weight"):
        assert torch.equal(model.enc.get_parameter(k), fresh.get_parameter(k)), k
    assert torch.equal(model.head.weight, head.weight)  # nn.Linear's init = reset_parameters
    assert {"head.weight", "head.bias", "enc.pooler.dense.bias"} <= set(names)
