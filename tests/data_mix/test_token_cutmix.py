"""danlu.data.cutmix: span swaps keep masks and special tokens, lambda = kept fraction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn

from danlu import Tricks
from danlu.data.cutmix import TokenCutMix, token_cutmix

CLS, SEP = 1, 2


def _bert_like_batch(seed=0, n=8, seq=12):
    """[CLS] tokens [SEP] pad..., random lengths, ids 3..49, pad 0."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, seq + 1, (n,), generator=g)
    ids = torch.zeros(n, seq, dtype=torch.long)
    for i, L in enumerate(lengths.tolist()):
        ids[i, :L] = torch.randint(3, 50, (L,), generator=g)
        ids[i, 0], ids[i, L - 1] = CLS, SEP
    mask = (ids != 0).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": torch.randint(0, 3, (n,), generator=g),
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_span_swap_invariants(seed, lam):
    b = _bert_like_batch(seed)
    ids, mask = b["input_ids"], b["attention_mask"]
    ids0, mask0 = ids.clone(), mask.clone()
    index = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    out = token_cutmix(ids, mask, lam, index, torch.Generator().manual_seed(seed), [CLS, SEP])
    assert torch.equal(ids, ids0) and torch.equal(mask, mask0), "input mutated"
    content = (mask == 1) & (ids != CLS) & (ids != SEP)
    for i, j in enumerate(index.tolist()):
        sw = out.swapped[i]
        # swapped positions come from the partner, all others are untouched
        assert torch.equal(out.input_ids[i][sw], ids[j][sw])
        assert torch.equal(out.input_ids[i][~sw], ids[i][~sw])
        # only content of both sequences is swapped: masks, [CLS]/[SEP], padding stay
        assert not (sw & ~(content[i] & content[j])).any()
        pos = sw.nonzero().flatten()
        if len(pos):
            assert torch.equal(pos, torch.arange(pos[0], pos[-1] + 1)), "span is not contiguous"
        n_i = int(content[i].sum())
        k = int(sw.sum())
        assert out.lam[i].item() == pytest.approx(1 - k / n_i if i != j else 1.0, abs=1e-7)
        room = int((content[i] & content[j]).sum())
        if i != j:
            assert k == min(round((1 - lam) * n_i), room)
    derived = (out.input_ids != 0).long()
    assert torch.equal(derived, mask)


def test_lambda_is_the_kept_fraction_without_specials_or_mask():
    ids = torch.arange(1, 21).reshape(2, 10)
    out = token_cutmix(ids, None, 0.7, torch.tensor([1, 0]), np.random.default_rng(0))
    assert out.lam.tolist() == pytest.approx([0.7, 0.7])
    assert out.swapped.sum(1).tolist() == [3, 3]


def test_docstring_example_values():
    ids = torch.tensor([[101, 5, 6, 7, 8, 102], [101, 9, 9, 9, 102, 0]])
    out = token_cutmix(
        ids,
        (ids != 0).long(),
        0.5,
        torch.tensor([1, 0]),
        torch.Generator().manual_seed(0),
        special_ids=[101, 102],
    )
    torch.testing.assert_close(out.lam, torch.tensor([0.5, 1 / 3]))


def test_trick_loss_matches_textbook_per_example_loss():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    batch = _bert_like_batch(seed=3)
    frozen = {k: v.clone() for k, v in batch.items()}
    trick = TokenCutMix(alpha=1.0, special_ids=[CLS, SEP], seed=3)
    state = Tricks([trick]).step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, loss_fn)
    assert all(torch.equal(batch[k], frozen[k]) for k in batch)
    ids, y, idx = batch["input_ids"], batch["labels"], trick.index
    new_ids = torch.where(trick.swapped, ids[idx], ids)
    assert trick.swapped.any()
    logits = model(new_ids, batch["attention_mask"])
    total = 0.0
    for i in range(len(y)):
        lam_i = trick.lam[i]
        li = F.cross_entropy(logits[i : i + 1], y[i : i + 1])
        lj = F.cross_entropy(logits[i : i + 1], y[idx[i]].reshape(1))
        total = total + lam_i * li + (1 - lam_i) * lj
    torch.testing.assert_close(state.loss, (total / len(y)).detach(), atol=1e-6, rtol=0)


def test_bad_inputs():
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        token_cutmix(torch.tensor([1, 2]), None, 0.5, torch.tensor([0]))
    with pytest.raises(TypeError, match="integer token ids"):
        token_cutmix(ids.float(), None, 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match="must match input_ids"):
        token_cutmix(ids, torch.ones(1, 2), 0.5, torch.tensor([0]))
    with pytest.raises(ValueError, match="lam must be in"):
        token_cutmix(ids, None, -0.1, torch.tensor([0]))
    with pytest.raises(ValueError, match="index must be"):
        token_cutmix(ids, None, 0.5, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="alpha"):
        TokenCutMix(alpha=0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs a dict batch"):
        Tricks([TokenCutMix()]).step(model, opt, (ids, torch.tensor([0])), loss_fn)
