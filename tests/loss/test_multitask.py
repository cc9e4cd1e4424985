"""Multi-task loss balancing: fixed weights, Kendall uncertainty weighting (gradients of the
log-variances against the closed form), DWA weights against a hand computation, the Trick
inside Tricks (one record per micro-batch, state round trip) and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import danlu
from danlu.loss import (
    MultiTask,
    MultiTaskLoss,
    dwa_weights,
    uncertainty_task_loss,
    weighted_task_loss,
)


def _losses(a: float, b: float) -> dict[str, torch.Tensor]:
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


def test_fixed_weights():
    assert weighted_task_loss(_losses(2.0, 3.0), {"a": 0.25, "b": 2.0}).item() == 6.5
    crit = MultiTaskLoss(["a", "b"], weights={"a": 0.25, "b": 2.0})
    assert crit(_losses(2.0, 3.0)).item() == 6.5
    assert MultiTaskLoss(["a", "b"])(_losses(2.0, 3.0)).item() == 5.0


def test_uncertainty_gradients_match_the_closed_form():
    s = torch.tensor([0.3, -0.7], requires_grad=True)
    L = torch.tensor([1.5, 0.4], requires_grad=True)
    loss = uncertainty_task_loss({"a": L[0], "b": L[1]}, {"a": s[0], "b": s[1]})
    loss.backward()
    s0, L0 = s.detach(), L.detach()
    # d/ds ½(exp(-s) L + s) = ½(1 - exp(-s) L);  d/dL = ½ exp(-s)
    torch.testing.assert_close(s.grad, 0.5 * (1 - torch.exp(-s0) * L0))
    torch.testing.assert_close(L.grad, 0.5 * torch.exp(-s0))
    # the module's parameters get the same gradients; at the optimum s = log L
    crit = MultiTaskLoss(["a", "b"], method="uncertainty")
    with torch.no_grad():
        crit.log_vars.copy_(torch.log(L0))
    crit({"a": L0[0], "b": L0[1]}).backward()
    torch.testing.assert_close(crit.log_vars.grad, torch.zeros(2))
    assert crit.current_weights() == pytest.approx({"a": 0.5 / 1.5, "b": 0.5 / 0.4})


def test_dwa_weights_by_hand():
    crit = MultiTaskLoss(["a", "b"], method="dwa", temperature=2.0)
    # epoch 1: means a=2, b=2; epoch 2: a=1, b=2 -> ratios 0.5 and 1 for epoch 3
    for epoch in ([(1.0, 1.0), (3.0, 3.0)], [(1.0, 2.0), (1.0, 2.0)]):
        for a, b in epoch:
            assert crit(_losses(a, b)).item() == pytest.approx(a + b)  # weights 1 at first
        crit.epoch_end()
    ea, eb = math.exp(0.5 / 2), math.exp(1.0 / 2)
    wa, wb = 2 * ea / (ea + eb), 2 * eb / (ea + eb)
    assert crit.current_weights() == pytest.approx({"a": wa, "b": wb})
    assert crit(_losses(3.0, 5.0)).item() == pytest.approx(3 * wa + 5 * wb)
    assert dwa_weights({"a": 1.0, "b": 2.0}, {"a": 2.0, "b": 2.0}) == pytest.approx(
        {"a": wa, "b": wb}
    )
    # eval-mode forwards do not count towards the epoch means
    crit.eval()
    crit(_losses(100.0, 100.0))
    assert int(crit.loss_count) == 1


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.a, self.b = nn.Linear(8, 3), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return {"a": self.a(h), "b": self.b(h)}


def _batch(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(6, 4, generator=g),
        "labels": {
            "a": torch.randint(0, 3, (6,), generator=g),
            "b": torch.randint(0, 2, (6,), generator=g),
        },
    }


def _loss_fn(model, batch):
    logits = model(batch["x"])
    return logits["a"].sum() * 0, logits  # the trick recomputes the loss


def _crit(method="uncertainty"):
    return MultiTaskLoss(
        {"a": nn.CrossEntropyLoss(), "b": nn.CrossEntropyLoss(weight=torch.tensor([1.0, 3.0]))},
        method,
    )


def test_trick_in_tricks_matches_the_plain_loss_and_resumes():
    torch.manual_seed(0)
    model, crit = TwoHeads(), _crit()
    opt = torch.optim.SGD([*model.parameters(), *crit.parameters()], lr=0.1)
    tricks = danlu.Tricks([MultiTask(crit)], accumulate=2)
    batch = _batch(0)
    with torch.no_grad():
        out = model(batch["x"])
        ref = 0.5 * (nn.functional.cross_entropy(out["a"], batch["labels"]["a"])
                     + nn.functional.cross_entropy(out["b"], batch["labels"]["b"],
                                                   weight=torch.tensor([1.0, 3.0])))  # fmt: skip
    state = tricks.step(model, opt, batch, _loss_fn)
    torch.testing.assert_close(state.loss, ref)  # s = 0: ½ sum of the task losses
    assert set(state.extra["task_losses"]) == {"a", "b"}
    tricks.step(model, opt, _batch(1), _loss_fn)
    assert crit.log_vars.grad is None and not torch.equal(crit.log_vars, torch.zeros(2))
    tricks.epoch_end()
    assert int(crit.epochs) == 1 and int(crit.loss_count) == 0
    # resume: a fresh trick continues from the saved log-variances and history
    fresh = MultiTask(_crit())
    danlu.Tricks([fresh], accumulate=2).load_state_dict(tricks.state_dict())
    torch.testing.assert_close(fresh.loss.log_vars, crit.log_vars)
    torch.testing.assert_close(fresh.loss.history, crit.history)


def test_heads_fn_splits_one_output_and_the_other_tricks_keep_it():
    torch.manual_seed(0)
    model = nn.Linear(4, 5)  # one output: 3 logits of task a, then 2 of task b
    crit = MultiTaskLoss({"a": nn.CrossEntropyLoss(), "b": nn.CrossEntropyLoss()},
                         weights={"a": 0.5, "b": 2.0})  # fmt: skip
    seen = []

    class Spy(danlu.Trick):  # an outer loss-chain trick: sees what MultiTask returns
        order = danlu.Order.LOSS - 1

        def compute_loss(self, forward, batch, state):
            loss, logits = forward(batch)
            seen.append(logits)
            return loss, logits

    def split(logits, batch):
        return {"a": (logits[:, :3], batch["labels"][:, 0]),
                "b": (logits[:, 3:], batch["labels"][:, 1])}  # fmt: skip

    def loss_fn(model, batch):
        out = model(batch["x"])
        return out.sum() * 0, out

    batch = {"x": torch.randn(6, 4), "labels": torch.tensor([[0, 1], [2, 0], [1, 1]] * 2)}
    with torch.no_grad():
        out = model(batch["x"])
        ref = 0.5 * nn.functional.cross_entropy(out[:, :3], batch["labels"][:, 0]) + (
            2.0 * nn.functional.cross_entropy(out[:, 3:], batch["labels"][:, 1])
        )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = danlu.Tricks([MultiTask(crit, heads_fn=split), Spy()]).step(model, opt, batch, loss_fn)
    torch.testing.assert_close(state.loss, ref)
    torch.testing.assert_close(seen[0], out)  # the original (6, 5) output, not the heads
    assert set(state.extra["task_losses"]) == {"a", "b"}
    with pytest.raises(TypeError, match="heads_fn must be callable"):
        MultiTask(crit, heads_fn=3)
    with pytest.raises(TypeError, match="not both"):
        MultiTask(crit, target_fn=lambda b: b["labels"], heads_fn=split)


def test_adversarial_closure_records_each_micro_batch_once():
    torch.manual_seed(0)
    model, crit = TwoHeads(), _crit("dwa")

    class Rerun(danlu.Trick):
        order = danlu.Order.ADVERSARIAL

        def after_backward(self, closure, state):
            closure()

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tricks = danlu.Tricks([MultiTask(crit), Rerun()])
    for i in range(3):
        tricks.step(model, opt, _batch(i), _loss_fn)
    assert int(crit.loss_count) == 3


def test_uncertainty_outside_the_optimizer_is_an_error():
    model, crit = TwoHeads(), _crit()
    tricks = danlu.Tricks([MultiTask(crit)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="not in the optimizer"):
        tricks.step(model, opt, _batch(0), _loss_fn)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MultiTaskLoss([]), "tasks must be a non-empty"),
        (lambda: MultiTaskLoss({}), "tasks must be a non-empty"),
        (lambda: MultiTaskLoss(["a"], "mean"), "method must be"),
        (
            lambda: MultiTaskLoss(["a", "b"], weights={"a": -1.0, "b": 1.0}),
            r"weights must be finite numbers >= 0",
        ),
        (lambda: MultiTaskLoss(["a", "b"], weights={"a": 1.0}), "one entry per task"),
        (lambda: MultiTaskLoss(["a"], "dwa", weights={"a": 1.0}), "weights are for method='fixed'"),
        (lambda: MultiTaskLoss(["a"], "dwa", temperature=0), "temperature must be"),
        (lambda: MultiTaskLoss(["a", "a"]), "unique"),
        (lambda: weighted_task_loss({}), "non-empty dict"),
        (
            lambda: MultiTaskLoss(["a", "b"])(_losses(1.0, 2.0) | {"c": torch.tensor(1.0)}),
            "one entry per task",
        ),
        (lambda: MultiTaskLoss(["a"])({"a": torch.ones(3)}), "not scalar"),
        (lambda: MultiTaskLoss(["a"]).task_losses({}, {}), "needs a criterion per task"),
        (lambda: dwa_weights({"a": 1.0}, {"a": 0.0}), "must be finite and > 0"),
    ],
)
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_type_errors():
    with pytest.raises(TypeError, match="not callable"):
        MultiTaskLoss({"a": 3})
    with pytest.raises(TypeError, match="built with a dict task -> criterion"):
        MultiTask(MultiTaskLoss(["a"]))


def test_docstring_examples():
    import doctest

    import danlu.loss.multitask as module

    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
