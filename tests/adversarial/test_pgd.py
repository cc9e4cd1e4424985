"""PGD against the textbook recipe (backup_grad / K attacks / restore_grad / restore)."""

from __future__ import annotations

import copy

import pytest
import torch
from _adversarial_models import TextbookPGD, batch, loss_fn, make, window_set_aside
from helpers import assert_params_close

from danlu import Tricks
from danlu.adversarial import PGD, project_rows


@pytest.mark.parametrize("kind", ["bert", "gru"])
@pytest.mark.parametrize("steps", [1, 3])
def test_one_step_gradients_match_textbook(kind, steps):
    model, emb_name = make(kind)
    ref = copy.deepcopy(model)
    b = batch()
    pgd = PGD(model, eps=0.5, alpha=0.3, steps=steps)  # 3 x 0.3 > 0.5: projection is active
    tb = TextbookPGD(ref, emb_name, eps=0.5, alpha=0.3)
    before = pgd.weight.detach().clone()
    loss_fn(model, b)[0].backward()
    loss_fn(ref, b)[0].backward()
    pgd.run(lambda: loss_fn(model, b)[0].backward())
    tb.run(lambda: loss_fn(ref, b)[0].backward(), steps)
    assert torch.equal(pgd.weight.detach(), before) and not pgd.attacked
    assert all(p.requires_grad for p in model.parameters())
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=n)


@pytest.mark.parametrize("kind", ["bert", "gru"])
def test_training_through_tricks_under_accumulation_attacks_each_micro_batch_alone(kind):
    """Each micro-batch's attack equals PGD on that micro-batch alone (not steered by the
    window's earlier gradients: issue 14, defect 4)."""
    model, emb_name = make(kind)
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    tricks = Tricks([PGD(model, eps=0.5, alpha=0.2, steps=3)], accumulate=2)
    tb = TextbookPGD(ref, emb_name, eps=0.5, alpha=0.2)
    for i in range(4):
        b = batch(seed=i)
        tricks.step(model, opt, b, loss_fn)
        with window_set_aside(ref):
            (loss_fn(ref, b)[0] / 2).backward()
            tb.run(lambda b=b: (loss_fn(ref, b)[0] / 2).backward(), 3)
        if i % 2 == 1:
            ref_opt.step()
            ref_opt.zero_grad()
    assert_params_close(model, ref, atol=1e-9)


def test_perturbation_path_matches_textbook():
    model, emb_name = make("gru")
    ref = copy.deepcopy(model)
    b = batch()
    pgd, tb = PGD(model, eps=0.5, alpha=0.3), TextbookPGD(ref, emb_name, eps=0.5, alpha=0.3)
    ref_w = ref.emb.weight
    for m in (model, ref):
        loss_fn(m, b)[0].backward()
    for t in range(4):
        pgd.attack(first=t == 0)
        tb.attack(is_first_attack=t == 0)
        torch.testing.assert_close(pgd.weight.detach(), ref_w.detach(), rtol=0, atol=1e-12)
        model.zero_grad()
        ref.zero_grad()
        loss_fn(model, b)[0].backward()
        loss_fn(ref, b)[0].backward()
    delta = pgd.weight.detach() - tb.emb_backup["emb.weight"]
    assert float(delta.norm()) <= 0.5 + 1e-9
    pgd.restore()
    assert torch.equal(pgd.weight.detach(), tb.emb_backup["emb.weight"])


def test_project_rows():
    orig = torch.zeros(2, 2)
    inside = torch.tensor([[0.3, 0.0], [0.0, 0.4]])
    assert torch.equal(project_rows(inside, orig, eps=1.0), inside)
    out = project_rows(inside * 10, orig, eps=1.0)
    torch.testing.assert_close(out.norm(), torch.tensor(1.0))
    torch.testing.assert_close(out / out.norm(), inside / inside.norm())


def test_nan_gradient_and_exception_restore():
    model, _ = make("gru")
    pgd = PGD(model, eps=1.0, alpha=0.3)
    before = pgd.weight.detach().clone()
    loss_fn(model, batch())[0].backward()
    pgd.weight.grad[5, 0] = float("nan")
    assert not pgd.attack(first=True)
    assert torch.equal(pgd.weight.detach(), before)
    pgd.restore()
    model.zero_grad()
    loss_fn(model, batch())[0].backward()
    clean = pgd.weight.grad

    def failing():
        raise KeyError("boom")

    with pytest.raises(KeyError):
        pgd.run(failing)
    assert torch.equal(pgd.weight.detach(), before)
    assert pgd.weight.grad is clean and all(p.requires_grad for p in model.parameters())


def test_errors():
    model, _ = make("gru")
    with pytest.raises(ValueError, match="eps"):
        PGD(model, eps=0)
    with pytest.raises(ValueError, match="alpha"):
        PGD(model, alpha=-0.1)
    for steps in (0, 1.5, True):
        with pytest.raises(ValueError, match="steps"):
            PGD(model, steps=steps)
    pgd = PGD(model)
    with pytest.raises(RuntimeError, match="first"):
        pgd.attack()
