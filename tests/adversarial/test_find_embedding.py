"""Finding the input embedding: HF getter, largest nn.Embedding, overrides, wrappers, errors."""

from __future__ import annotations

import pytest
import torch
from _adversarial_models import GRUClassifier, tiny_bert
from helpers import TinyTextClassifier
from torch import nn

from danlu.adversarial import FGM, PGD, find_embedding


def test_hf_model_uses_get_input_embeddings():
    model = tiny_bert()
    # BERT also has position (64) and token-type (2) embeddings: the getter decides
    assert find_embedding(model) is model.bert.embeddings.word_embeddings.weight


def test_largest_embedding_without_getter():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Embedding(16, 4)
            self.tok = nn.Embedding(50, 4)

    model = Two()
    assert find_embedding(model) is model.tok.weight
    assert find_embedding(GRUClassifier()) is not None


def test_overrides_by_name_parameter_and_module():
    model = tiny_bert()
    pos = model.bert.embeddings.position_embeddings
    assert find_embedding(model, "bert.embeddings.position_embeddings") is pos.weight
    assert find_embedding(model, "bert.embeddings.position_embeddings.weight") is pos.weight
    assert find_embedding(model, pos) is pos.weight
    assert find_embedding(model, pos.weight) is pos.weight
    assert FGM(model, target=pos).weight is pos.weight


def test_wrappers_are_looked_through():
    model = TinyTextClassifier()
    assert find_embedding(torch.compile(model)) is model.embed.weight
    assert find_embedding(nn.DataParallel(model)) is model.embed.weight


def test_no_embedding_and_ambiguity_errors_list_candidates():
    with pytest.raises(ValueError, match="found no input embedding"):
        FGM(nn.Linear(3, 2))

    class Twins(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Embedding(20, 4)
            self.b = nn.Embedding(20, 8)

    with pytest.raises(ValueError, match=r"ambiguous.*'a' \(20, 4\), 'b' \(20, 8\)"):
        PGD(Twins())
    assert FGM(Twins(), target="b").weight.shape == (20, 8)
    with pytest.raises(ValueError, match=r"'nope'.*candidates: 'a'"):
        FGM(Twins(), target="nope")
    with pytest.raises(ValueError, match="2-D"):
        FGM(nn.Sequential(nn.Embedding(5, 2), nn.LayerNorm(2)), target="1")
    with pytest.raises(TypeError, match="target"):
        FGM(Twins(), target=3)


def test_shared_weight_is_one_candidate():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Embedding(20, 4)
            self.b = nn.Embedding(20, 4)
            self.b.weight = self.a.weight

    model = Tied()
    assert find_embedding(model) is model.a.weight
