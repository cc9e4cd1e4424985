"""UDA / FixMatch for a model without text access: the augmented view is danlu's token-level
augmenter (danlu.predict.TokenDropout) on the ids, reused through ``augment=``; the term
equals the formula on the same dropped ids, and only the augmented side gets a gradient."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from danlu.predict import TokenDropout, token_dropout
from danlu.semi import UDA, FixMatch


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Embedding(20, 8), nn.Flatten(), nn.Linear(8 * 6, 3))


def _logits(model, batch):
    assert "labels" not in batch
    return model(batch["input_ids"])


IDS = torch.randint(1, 20, (5, 6), generator=torch.Generator().manual_seed(1))


def test_uda_and_fixmatch_with_token_dropout_view():
    model = _model()
    view = TokenDropout(0.3, mask_id=0)
    uda = UDA([{"input_ids": IDS}], temperature=0.5, threshold=None, logits_fn=_logits,
              augment=partial(view, generator=torch.Generator().manual_seed(7)))  # fmt: skip
    fix = FixMatch([{"input_ids": IDS}], threshold=0.34, logits_fn=_logits,
                   augment=partial(view, generator=torch.Generator().manual_seed(7)))  # fmt: skip
    dropped = token_dropout(IDS, 0.3, 0, torch.Generator().manual_seed(7))
    assert not torch.equal(dropped, IDS)

    # the formulas, written out on the same dropped ids
    with torch.no_grad():
        clean = model(IDS)
    aug = model(dropped)
    target = F.softmax(clean / 0.5, -1)
    uda_ref = (target * (target.log() - F.log_softmax(aug, -1))).sum(-1).mean()
    conf, pseudo = clean.softmax(-1).max(-1)
    ce = F.cross_entropy(aug, pseudo, reduction="none")
    fix_ref = (ce * (conf >= 0.34)).mean()

    item = {"input_ids": IDS}
    for trick, ref in ((uda, uda_ref), (fix, fix_ref)):
        model.zero_grad()
        term = trick.term(model, item)
        torch.testing.assert_close(term, ref, rtol=1e-6, atol=1e-7)
        # gradient = the gradient through the augmented side only (clean side fixed)
        (g_ref,) = torch.autograd.grad(ref, model[0].weight, retain_graph=True)
        term.backward()
        torch.testing.assert_close(model[0].weight.grad, g_ref, rtol=1e-5, atol=1e-7)
    assert torch.equal(item["input_ids"], IDS)  # the user's batch is not modified
