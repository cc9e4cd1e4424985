"""UDA and FixMatch against their formulas written plainly, TSA thresholds, detached clean
sides, the Tricks form equal to a hand loop under accumulation, and errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch

import danlu
from danlu.semi import (
    UDA,
    FixMatch,
    fixmatch_loss,
    tsa_cross_entropy,
    tsa_threshold,
    uda_loss,
)


def _plain_uda(clean, aug, t, thr):
    total = 0.0
    for c, a in zip(clean.double().tolist(), aug.double().tolist()):
        p = [math.exp(x) / sum(math.exp(y) for y in c) for x in c]
        s = [math.exp(x / t) / sum(math.exp(y / t) for y in c) for x in c]
        q = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        kl = sum(si * (math.log(si) - math.log(qi)) for si, qi in zip(s, q))
        total += kl if thr is None or max(p) >= thr else 0.0
    return total / len(clean)


@pytest.mark.parametrize("t, thr", [(0.4, 0.6), (1.0, None), (2.0, 0.9)])
def test_uda_loss_against_formula_and_clean_side_detached(t, thr):
    g = torch.Generator().manual_seed(0)
    clean = (torch.randn(6, 3, generator=g) * 2).requires_grad_()
    aug = torch.randn(6, 3, generator=g).requires_grad_()
    loss = uda_loss(clean, aug, temperature=t, threshold=thr)
    assert abs(float(loss.detach()) - _plain_uda(clean.detach(), aug.detach(), t, thr)) < 1e-6
    loss.backward()
    assert clean.grad is None and aug.grad is not None


def test_tsa_thresholds_at_chosen_steps():
    k = 4
    for step, sched, alpha in [
        (30, "linear", 0.3),
        (30, "log", 1 - math.exp(-1.5)),
        (30, "exp", math.exp(-3.5)),
        (250, "linear", 1.0),  # clipped after the end
    ]:
        assert tsa_threshold(step, 100, k, sched) == pytest.approx(alpha * 0.75 + 0.25)
    logits = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([0, 0, 0])  # p_correct = 0.95, 0.5, 0.12
    got = tsa_cross_entropy(logits, target, 0.6)
    ref = F.cross_entropy(logits[1:], target[1:])  # the confident first example leaves
    torch.testing.assert_close(got, ref)
    assert float(tsa_cross_entropy(logits[:1], target[:1], 0.6)) == 0.0


def test_fixmatch_loss_against_formula():
    g = torch.Generator().manual_seed(1)
    weak = (torch.randn(8, 3, generator=g) * 3).requires_grad_()
    strong = torch.randn(8, 3, generator=g).requires_grad_()
    loss, mask = fixmatch_loss(weak, strong, threshold=0.8)
    p = weak.detach().softmax(-1)
    ref, ref_mask = 0.0, []
    for i in range(8):
        keep = float(p[i].max()) >= 0.8
        ref_mask.append(keep)
        if keep:
            ref += -float(strong[i].detach().log_softmax(-1)[int(p[i].argmax())])
    assert mask.tolist() == ref_mask and 0 < sum(ref_mask) < 8
    assert abs(float(loss.detach()) - ref / 8) < 1e-6
    loss.backward()
    assert weak.grad is None and strong.grad is not None


def _unlabelled(n=2):
    """(clean, augmented) pairs of unlabelled batches: no labels anywhere."""
    out = []
    for i in range(n):
        ids = make_batch(seed=50 + i)["input_ids"]
        out.append(({"input_ids": ids}, {"input_ids": ids.flip(1)}))
    return out


def _logits(model, batch):
    assert "labels" not in batch  # the unlabelled branch never sees a label
    return model(batch["input_ids"])


@pytest.mark.parametrize("kind", ["uda", "fixmatch"])
def test_trick_equals_hand_loop_under_accumulation(kind):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    ref = copy.deepcopy(model)
    pairs = _unlabelled(2)
    if kind == "uda":
        trick = UDA(pairs, alpha=2.0, temperature=0.5, threshold=0.4, logits_fn=_logits)
    else:
        trick = FixMatch(pairs, alpha=2.0, threshold=0.34, logits_fn=_logits)
    tricks = danlu.Tricks([trick], accumulate=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    batches = [make_batch(seed=i) for i in range(4)]
    for i, b in enumerate(batches):
        tricks.step(model, opt, b, loss_fn)
        clean, aug = pairs[i % 2]  # cycled
        with torch.no_grad():
            lc = ref(clean["input_ids"])
        la = ref(aug["input_ids"])
        if kind == "uda":
            term = uda_loss(lc, la, 0.5, 0.4)
        else:
            term = fixmatch_loss(lc, la, 0.34)[0]
        ((loss_fn(ref, b)[0] + 2.0 * term) / 2).backward()
        if i % 2:
            ref_opt.step()
            ref_opt.zero_grad()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)
    assert trick.stream.passes == 1 and kind in tricks.state.extra


def test_uda_tsa_replaces_supervised_loss():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    uda = UDA(_unlabelled(1), tsa="linear", total_steps=10, num_classes=3, logits_fn=_logits)
    tricks = danlu.Tricks([uda])
    b = make_batch()
    st = tricks.step(model, torch.optim.SGD(model.parameters(), lr=0.0), b, loss_fn)
    eta = tsa_threshold(0, 10, 3, "linear")
    assert st.extra["tsa_threshold"] == eta
    logits = model(b["input_ids"])
    clean, aug = _unlabelled(1)[0]
    ref = tsa_cross_entropy(logits, b["labels"], eta) + uda_loss(
        model(clean["input_ids"]), model(aug["input_ids"])
    )
    torch.testing.assert_close(st.loss, ref.detach())
    with pytest.raises(ValueError, match="silently dropped"):  # loss-replacing: refuses inner terms
        danlu.Tricks([uda, danlu.Delayed(danlu.loss.RDrop(), start_step=0)])


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: UDA(_unlabelled(), temperature=0.0), "temperature must be a finite number > 0"),
        (lambda: UDA(_unlabelled(), threshold=1.5), r"threshold must be a probability in \(0, 1\]"),
        (lambda: FixMatch(_unlabelled(), threshold=0.0), r"threshold must be a probability"),
        (lambda: UDA(_unlabelled(), tsa="linear"), "needs total_steps"),
        (lambda: UDA(_unlabelled(), tsa="cosine", total_steps=5, num_classes=2), "schedule"),
        (lambda: UDA([]), "empty"),
        (lambda: FixMatch(_unlabelled(), alpha=-1.0), "alpha"),
    ],
)
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_unpaired_items_need_augment():
    model = TinyTextClassifier()
    uda = UDA([{"input_ids": torch.ones(2, 3, dtype=torch.long)}], logits_fn=_logits)
    with pytest.raises(ValueError, match="pair"):
        uda.term(model, uda.stream.next())
    same = UDA([{"input_ids": torch.ones(2, 3, dtype=torch.long)}], augment=lambda b: b,
               logits_fn=_logits, temperature=1.0, threshold=None)  # fmt: skip
    assert float(same.term(model, same.stream.next()).detach()) == pytest.approx(0.0, abs=1e-6)
