"""AWP against the Kaggle AWP class, written out here, on a tiny BERT and a GRU model."""

from __future__ import annotations

import copy

import pytest
import torch
from _adversarial_models import batch, loss_fn, make
from helpers import assert_params_close

from danlu import Tricks
from danlu.adversarial import AWP, awp_select


class KaggleAWP:
    """The AWP class of the Feedback Prize / CommonLit notebooks (without AMP)."""

    def __init__(self, model, optimizer, adv_param="weight", adv_lr=1.0, adv_eps=0.2,
                 adv_step=1):
        self.model, self.optimizer = model, optimizer
        self.adv_param, self.adv_lr, self.adv_eps, self.adv_step = (
            adv_param, adv_lr, adv_eps, adv_step)
        self.backup, self.backup_eps = {}, {}
        self.loss_fn = loss_fn

    def attack_backward(self, b):
        self._save()
        for _ in range(self.adv_step):
            self._attack_step()
            adv_loss = self.loss_fn(self.model, b)[0]
            self.optimizer.zero_grad()
            adv_loss.backward()
        self._restore()

    def _attack_step(self):
        e = 1e-6
        for name, param in self.model.named_parameters():
            if param.requires_grad and param.grad is not None and self.adv_param in name:
                norm1 = torch.norm(param.grad)
                norm2 = torch.norm(param.data.detach())
                if norm1 != 0 and not torch.isnan(norm1):
                    r_at = self.adv_lr * param.grad / (norm1 + e) * (norm2 + e)
                    param.data.add_(r_at)
                    param.data = torch.min(
                        torch.max(param.data, self.backup_eps[name][0]), self.backup_eps[name][1]
                    )

    def _save(self):
        for name, param in self.model.named_parameters():
            selected = param.requires_grad and param.grad is not None and self.adv_param in name
            if selected and name not in self.backup:
                self.backup[name] = param.data.clone()
                grad_eps = self.adv_eps * param.abs().detach()
                self.backup_eps[name] = (self.backup[name] - grad_eps,
                                         self.backup[name] + grad_eps)

    def _restore(self):
        for name, param in self.model.named_parameters():
            if name in self.backup:
                param.data = self.backup[name]
        self.backup, self.backup_eps = {}, {}


@pytest.mark.parametrize("kind", ["bert", "gru"])
@pytest.mark.parametrize("steps", [1, 2])
def test_run_matches_kaggle_class(kind, steps):
    model, _ = make(kind)
    ref = copy.deepcopy(model)
    b = batch()
    awp = AWP(model, adv_lr=0.5, adv_eps=0.01, steps=steps)
    kaggle = KaggleAWP(ref, torch.optim.SGD(ref.parameters(), lr=0.1), adv_lr=0.5,
                       adv_eps=0.01, adv_step=steps)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn(model, b)[0].backward()
    loss_fn(ref, b)[0].backward()
    awp.run(lambda: loss_fn(model, b)[0].backward())
    kaggle.attack_backward(b)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not awp.attacked
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=n)


def test_perturbation_matches_kaggle_and_respects_bound():
    model, _ = make("bert")
    ref = copy.deepcopy(model)
    b = batch()
    for m in (model, ref):
        loss_fn(m, b)[0].backward()
    awp = AWP(model, adv_lr=5.0, adv_eps=0.01)  # large step: the clamp decides
    kaggle = KaggleAWP(ref, None, adv_lr=5.0, adv_eps=0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert awp.attack() == len(awp_select(model))
    kaggle._save()
    kaggle._attack_step()
    assert_params_close(model, ref, atol=1e-12)
    w = dict(model.named_parameters())["bert.encoder.layer.0.attention.self.query.weight"]
    w0 = before["bert.encoder.layer.0.attention.self.query.weight"]
    assert bool(((w - w0).abs() <= 0.01 * w0.abs() + 1e-12).all())
    assert not torch.equal(w.detach(), w0)
    assert torch.equal(dict(model.named_parameters())["classifier.bias"].detach(),
                       before["classifier.bias"])  # biases are not selected
    awp.restore()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_trick_with_accumulation_keeps_earlier_micro_batches():
    model, _ = make("bert")
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    tricks = Tricks([AWP(model, adv_lr=0.5, adv_eps=0.01, start_step=1)], accumulate=2)
    kaggle = KaggleAWP(ref, ref_opt, adv_lr=0.5, adv_eps=0.01)
    kaggle.loss_fn = lambda m, b: (loss_fn(m, b)[0] / 2, None)  # Tricks scales by 1/accumulate
    for i in range(6):
        b = batch(seed=i)
        tricks.step(model, opt, b, loss_fn)
        # reference: each micro-batch's gradient (of loss / 2) on its own, then summed
        saved = [p.grad for p in ref.parameters()]
        ref.zero_grad()
        kaggle.loss_fn(ref, b)[0].backward()
        if i >= 2:  # AWP starts at optimizer step 1, i.e. from the third micro-batch
            kaggle.attack_backward(b)
        for p, s in zip(ref.parameters(), saved):
            p.grad = p.grad if s is None else s + p.grad
        if i % 2 == 1:
            ref_opt.step()
            ref_opt.zero_grad()
    assert_params_close(model, ref, atol=1e-9)


def test_selector_and_errors():
    model, _ = make("gru")
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in awp_select(model)} == {
        "emb.weight", "gru.weight_ih_l0", "gru.weight_hh_l0", "head.weight"}
    only_head = awp_select(model, lambda n, p: n.startswith("head"))
    assert [names[id(p)] for p in only_head] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="selects no"):
        AWP(model, adv_param="nothing")
    with pytest.raises(ValueError, match="adv_lr"):
        AWP(model, adv_lr=0)
    with pytest.raises(ValueError, match="adv_eps"):
        AWP(model, adv_eps=-1)
    with pytest.raises(ValueError, match="start_step"):
        AWP(model, start_step=-1)
    with pytest.raises(ValueError, match="steps"):
        AWP(model, steps=0)
