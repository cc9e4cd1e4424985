"""Label smoothing and temperature-scaled cross-entropy against plain formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch

from danlu import Tricks
from danlu.loss import LabelSmoothing, TemperatureCE, temperature_cross_entropy


def plain_smoothed_ce(logits, target, eps, temperature=1.0, ignore_index=-100):
    """mean over kept rows of -sum_c q_c log softmax(x / T)_c, q = (1-eps) onehot + eps/C."""
    keep = target != ignore_index
    x, t = logits[keep].double() / temperature, target[keep]
    q = (1 - eps) * F.one_hot(t, x.shape[1]).double() + eps / x.shape[1]
    return -(q * torch.log_softmax(x, 1)).sum(1).mean()


def _step(trick, batch=None, model=None):
    torch.manual_seed(0)
    model = model or TinyTextClassifier()
    batch = batch or make_batch()
    with torch.no_grad():
        logits = model(batch["input_ids"])
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return Tricks([trick]).step(model, opt, batch, loss_fn), logits, batch


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_trick_matches_plain_formula(eps):
    state, logits, batch = _step(LabelSmoothing(eps))
    expected = plain_smoothed_ce(logits, batch["labels"], eps)
    torch.testing.assert_close(state.loss.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_temperature_ce_matches_plain_formula(temperature):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(12, 4, generator=g) * 3, torch.randint(0, 4, (12,), generator=g)
    t[0] = -100
    ref = plain_smoothed_ce(x, t, 0.0, temperature)
    torch.testing.assert_close(
        temperature_cross_entropy(x, t, temperature).double(), ref, rtol=1e-5, atol=1e-6
    )
    state, logits, batch = _step(TemperatureCE(temperature, label_smoothing=0.1))
    expected = plain_smoothed_ce(logits, batch["labels"], 0.1, temperature)
    torch.testing.assert_close(state.loss.double(), expected, rtol=1e-5, atol=1e-6)
    if temperature == 1.0:
        assert torch.equal(temperature_cross_entropy(x, t, 1.0), F.cross_entropy(x, t))


def test_token_level_logits_and_labels_with_pads():
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Embedding(20, 8), torch.nn.Linear(8, 3)

        def forward(self, ids):
            return self.head(self.embed(ids))  # (B, T, C)

    torch.manual_seed(0)
    model = Tagger()
    ids = torch.randint(0, 20, (3, 5))
    labels = torch.randint(0, 3, (3, 5))
    labels[0, 3:] = -100

    def tag_loss(m, b):
        logits = m(b["ids"])
        return F.cross_entropy(logits.transpose(1, 2), b["labels"]), logits

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = Tricks([LabelSmoothing(0.2)]).step(model, opt, {"ids": ids, "labels": labels}, tag_loss)
    logits = model(ids).detach().reshape(-1, 3)
    expected = plain_smoothed_ce(logits, labels.reshape(-1), 0.2)
    torch.testing.assert_close(state.loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_target_fn_and_missing_labels():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))

    def tuple_loss(m, b):
        logits = m(b[0])
        return F.cross_entropy(logits, b[1]), logits

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    state = Tricks([TemperatureCE(2.0, target_fn=lambda b: b[1])]).step(
        model, opt, (x, y), tuple_loss
    )
    torch.testing.assert_close(state.loss, F.cross_entropy(model(x) / 2.0, y).detach())
    with pytest.raises(ValueError, match="no key 'labels'"):
        Tricks([LabelSmoothing(0.1)]).step(model, opt, (x, y), tuple_loss)
    with pytest.raises(TypeError, match="target_fn must be callable"):
        LabelSmoothing(0.1, target_fn="labels")


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        TemperatureCE(bad)
    with pytest.raises(ValueError, match="temperature must be"):
        temperature_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), bad)


def test_smoothing_out_of_range_raises():
    with pytest.raises(ValueError, match=r"eps must be in \[0, 1\]"):
        LabelSmoothing(1.5)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
        TemperatureCE(2.0, label_smoothing=-0.1)
