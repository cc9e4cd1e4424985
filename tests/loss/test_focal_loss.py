"""Focal loss against cross-entropy, hand-computed values and plain textbook formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch

from danlu import Tricks
from danlu.loss import Focal, FocalLoss, focal_loss


def plain_softmax_focal(logits, target, gamma, alpha=None, eps=0.0, ignore_index=-100):
    """Textbook: mean over kept rows of sum_c alpha_c q_c (1 - p_c)^gamma (-log p_c), in fp64."""
    x = logits.double()
    n_classes = x.shape[1]
    keep = target != ignore_index
    x, t = x[keep], target[keep]
    p = torch.softmax(x, dim=1)
    q = (1 - eps) * F.one_hot(t, n_classes).double() + eps / n_classes
    a = (
        torch.ones(n_classes, dtype=torch.float64)
        if alpha is None
        else torch.tensor(alpha).double()
    )
    return (a * q * (1 - p) ** gamma * -torch.log(p)).sum(1).mean()


def torchvision_style_sigmoid_focal(inputs, targets, alpha=0.25, gamma=2.0):
    """torchvision.ops.sigmoid_focal_loss, written out (reduction='none'; alpha < 0: none)."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return loss


def data(n=64, c=5, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * scale, torch.randint(0, c, (n,), generator=g)


# ------------------------------------------------------------------ gamma = 0 is cross-entropy
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_gamma0_equals_cross_entropy_exactly(reduction, eps):
    x, t = data()
    t[::5] = -100
    x = x.requires_grad_()
    ours = focal_loss(x, t, gamma=0.0, reduction=reduction, label_smoothing=eps)
    ref = F.cross_entropy(x, t, reduction=reduction, label_smoothing=eps)
    assert torch.equal(ours, ref)
    # spatial logits (N, C, d) with an unusual ignore_index
    x3, t3 = torch.randn(4, 5, 7), torch.randint(0, 5, (4, 7))
    t3[0, :3] = 3
    assert torch.equal(
        focal_loss(x3, t3, 0.0, ignore_index=3, reduction=reduction),
        F.cross_entropy(x3, t3, ignore_index=3, reduction=reduction),
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_path_with_unit_alpha_matches_cross_entropy_values_and_grads(reduction):
    # alpha=[1]*C forces the focal code path (no dispatch to F.cross_entropy)
    x, t = data(n=50, c=4, seed=1)
    t[3] = t[17] = -100
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = focal_loss(x1, t, gamma=0.0, alpha=[1.0] * 4, reduction=reduction)
    ref = F.cross_entropy(x2, t, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


def test_tiny_gamma_approaches_cross_entropy():
    x, t = data(seed=2)
    torch.testing.assert_close(
        focal_loss(x, t, gamma=1e-7), F.cross_entropy(x, t), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------ hand-computed values
def test_hand_computed_softmax_values():
    # two equal logits: p_t = 0.5, gamma 2: (1 - 0.5)^2 * ln 2 = 0.25 * 0.693147 = 0.1732868
    assert focal_loss(torch.zeros(1, 2), torch.tensor([0])).item() == pytest.approx(
        0.1732868, abs=1e-6
    )
    # logits [ln 3, 0]: p = [0.75, 0.25]; alpha = [0.25, 0.75], gamma 2
    #   target 0: 0.25 * 0.25^2 * -ln 0.75 = 0.25 * 0.0625 * 0.2876821 = 0.0044950
    #   target 1: 0.75 * 0.75^2 * -ln 0.25 = 0.75 * 0.5625 * 1.3862944 = 0.5848430
    x = torch.tensor([[math.log(3.0), 0.0]] * 2)
    per = focal_loss(x, torch.tensor([0, 1]), 2.0, alpha=[0.25, 0.75], reduction="none")
    torch.testing.assert_close(per, torch.tensor([0.0044950, 0.5848430]), atol=1e-6, rtol=0)
    # three classes, logits [0, ln 2, 0]: p = [0.25, 0.5, 0.25]; gamma 1, target 1:
    #   0.5 * -ln 0.5 = 0.3465736
    x = torch.tensor([[0.0, math.log(2.0), 0.0]])
    assert focal_loss(x, torch.tensor([1]), 1.0).item() == pytest.approx(0.3465736, abs=1e-6)


def test_hand_computed_sigmoid_value():
    # x = 0, t = 1: p = 0.5; alpha 0.25, gamma 2: 0.25 * 0.5^2 * ln 2 = 0.0433217
    out = focal_loss(torch.zeros(1), torch.ones(1), 2.0, 0.25, mode="sigmoid")
    assert out.item() == pytest.approx(0.0433217, abs=1e-6)
    # t = 0 side gets 1 - alpha = 0.75: 0.75 * 0.25 * ln 2 = 0.1299651
    out = focal_loss(torch.zeros(1), torch.zeros(1), 2.0, 0.25, mode="sigmoid")
    assert out.item() == pytest.approx(0.1299651, abs=1e-6)


# ------------------------------------------------------------------ plain formulas
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, [0.1, 0.5, 1.0, 2.0, 0.0]])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_softmax_matches_plain_formula(gamma, alpha, eps):
    x, t = data(seed=3)
    t[::7] = -100
    ours = focal_loss(x, t, gamma, alpha, label_smoothing=eps)
    ref = plain_softmax_focal(x, t, gamma, alpha, eps)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_sum_and_none_and_spatial_logits_match_plain_formula():
    x, t = torch.randn(3, 4, 5), torch.randint(0, 4, (3, 5))
    t[1, 2] = -100
    per = focal_loss(x, t, 2.0, reduction="none")
    assert per.shape == (3, 5) and per[1, 2] == 0
    flat_x, flat_t = x.movedim(1, -1).reshape(-1, 4), t.reshape(-1)
    ref = plain_softmax_focal(flat_x, flat_t, 2.0)
    torch.testing.assert_close(focal_loss(x, t, 2.0).double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        focal_loss(x, t, 2.0, reduction="sum").double(), ref * 14, rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(per.sum(), focal_loss(x, t, 2.0, reduction="sum"))


@pytest.mark.parametrize("alpha", [0.25, -1.0])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sigmoid_matches_torchvision_formula(alpha, gamma):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(16, 6, generator=g) * 3
    y = torch.randint(0, 2, (16, 6), generator=g).float()
    ours = focal_loss(x, y, gamma, None if alpha < 0 else alpha, mode="sigmoid", reduction="none")
    torch.testing.assert_close(ours, torchvision_style_sigmoid_focal(x, y, alpha, gamma))
    if alpha < 0 and gamma == 0:  # plain BCE
        torch.testing.assert_close(
            focal_loss(x, y, 0.0, mode="sigmoid"), F.binary_cross_entropy_with_logits(x, y)
        )


def test_sigmoid_per_label_alpha_smoothing_and_ignore_match_plain_formula():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(10, 3, generator=g) * 2
    y = torch.randint(0, 2, (10, 3), generator=g).float()
    y[0, 1] = y[4, 2] = -100
    alpha, gamma, eps = torch.tensor([0.2, 0.5, 0.9]), 1.5, 0.1
    keep = y != -100
    t = torch.where(keep, y, 0.0) * (1 - eps) + eps / 2
    p = torch.sigmoid(x.double())
    a = alpha.double()
    plain = a * t * (1 - p) ** gamma * -torch.log(p) + (1 - a) * (1 - t) * p**gamma * -torch.log(
        1 - p
    )
    ref = plain[keep].mean()
    ours = focal_loss(x, y, gamma, alpha, mode="sigmoid", label_smoothing=eps)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize("gamma", [0.5, 3.0])
@pytest.mark.parametrize("case", ["softmax", "softmax_smooth", "softmax_alpha", "sigmoid"])
def test_hand_written_gradient_passes_gradcheck(gamma, case):
    x, t = data(n=6, c=4, seed=6, scale=2.0)
    x = x.double().requires_grad_()
    t[2] = -100
    if case == "sigmoid":
        y = (torch.rand(6, 4, generator=torch.Generator().manual_seed(7)) > 0.5).double()
        fn = lambda z: focal_loss(z, y, gamma, 0.3, mode="sigmoid")  # noqa: E731
    else:
        kw = {"label_smoothing": 0.1} if case == "softmax_smooth" else {}
        alpha = [0.5, 1.0, 2.0, 0.3] if case == "softmax_alpha" else [1.0] * 4
        fn = lambda z: focal_loss(z, t, gamma, alpha, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_large_logits_give_finite_loss_and_grads(gamma, mode, eps):
    x = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0], [0.0, 0.0, -1e4]], requires_grad=True)
    if mode == "softmax":
        t = torch.tensor([0, 0, 2])  # confident right, confident wrong, impossible class
    else:
        t = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    loss = focal_loss(x, t, gamma, mode=mode, label_smoothing=eps)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert loss.item() > 1e3  # the confidently wrong rows cost ~1e4


def test_gradient_near_p_equals_one_matches_fp64_autograd():
    # p_t = 1 - 2e-9 in fp32 rounds to 1: the hand-written gradient stays exact (0.5 < 1 case)
    x = torch.tensor([[20.0, 0.0, -3.0], [2.0, 1.0, 0.0]])
    t = torch.tensor([0, 2])
    for gamma in (0.5, 2.0):
        ours_x = x.clone().requires_grad_()
        focal_loss(ours_x, t, gamma, [1.0, 1.0, 1.0]).backward()
        ref_x = x.double().requires_grad_()
        plain_softmax_focal(ref_x, t, gamma).backward()
        torch.testing.assert_close(ours_x.grad.double(), ref_x.grad, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ module and trick
def test_focal_loss_module_and_alpha_buffer():
    crit = FocalLoss(gamma=2.0, alpha=[1.0, 2.0, 3.0, 4.0, 5.0], reduction="sum")
    assert "alpha" in crit.state_dict()
    x, t = data()
    torch.testing.assert_close(
        crit(x, t), focal_loss(x, t, 2.0, [1.0, 2.0, 3.0, 4.0, 5.0], reduction="sum")
    )
    assert "gamma=2.0" in repr(crit)
    assert FocalLoss().alpha is None


def test_focal_trick_replaces_the_loss_in_tricks():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = make_batch()
    with torch.no_grad():
        expected = focal_loss(model(batch["input_ids"]), batch["labels"], 2.0, [1.0, 0.5, 2.0])
    state = Tricks([Focal(2.0, [1.0, 0.5, 2.0])]).step(model, opt, batch, loss_fn)
    torch.testing.assert_close(state.loss, expected)


def test_focal_trick_gradient_equals_manual_backward():
    torch.manual_seed(0)
    a, b = TinyTextClassifier(), TinyTextClassifier()
    b.load_state_dict(a.state_dict())
    batch = make_batch(seed=3)
    focal_loss(b(batch["input_ids"]), batch["labels"], gamma=1.5).backward()
    opt = torch.optim.SGD(a.parameters(), lr=0.0)
    Tricks([Focal(1.5)], accumulate=2).step(a, opt, batch, loss_fn)  # no step: grads kept
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad * 2, pb.grad)


def test_focal_trick_with_tuple_batch_and_target_fn():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))

    def tuple_loss(m, b):
        logits = m(b[0])
        return F.cross_entropy(logits, b[1]), logits

    trick = Focal(2.0, target_fn=lambda b: b[1])
    state = Tricks([trick]).step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), tuple_loss
    )
    torch.testing.assert_close(state.loss, focal_loss(model(x), y).detach())
    with pytest.raises(ValueError, match="cannot find the labels"):
        Tricks([Focal()]).step(
            model, torch.optim.SGD(model.parameters(), lr=0.0), (x, y), tuple_loss
        )
    with pytest.raises(ValueError, match=r"return \(loss, logits\)"):
        Tricks([Focal(target_fn=lambda b: b[1])]).step(
            model,
            torch.optim.SGD(model.parameters(), lr=0.0),
            (x, y),
            lambda m, b: tuple_loss(m, b)[0],
        )


def test_focal_does_not_mutate_inputs():
    x, t = data()
    t[0] = -100
    x0, t0 = x.clone(), t.clone()
    focal_loss(x, t, 2.0, [1.0] * 5, label_smoothing=0.1)
    assert torch.equal(x, x0) and torch.equal(t, t0)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
        ({"gamma": float("nan")}, "gamma must be"),
        ({"alpha": [1.0, 2.0]}, "sequence of 5 per-class weights"),
        ({"alpha": 0.25}, "scalar alpha is only for mode='sigmoid'"),
        ({"alpha": [1.0, -1.0, 1.0, 1.0, 1.0]}, "alpha values must be >= 0"),
        ({"alpha": [1.0, float("nan"), 1.0, 1.0, 1.0]}, "alpha values must be >= 0"),
        ({"reduction": "avg"}, "reduction must be"),
        ({"mode": "softplus"}, "mode must be"),
        ({"label_smoothing": 1.5}, "label_smoothing must be in"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    x, t = data()
    with pytest.raises(ValueError, match=match):
        focal_loss(x, t, **kwargs)


def test_bad_targets_and_sigmoid_alpha_raise():
    x, t = data()
    with pytest.raises(ValueError, match="integer class indices of shape"):
        focal_loss(x, t[:10])
    with pytest.raises(ValueError, match="integer class indices"):
        focal_loss(x, t.float())
    with pytest.raises(ValueError, match="target of the logits' shape"):
        focal_loss(x, t, mode="sigmoid")
    y = torch.zeros_like(x)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        focal_loss(x, y, alpha=1.5, mode="sigmoid")
    with pytest.raises(ValueError, match="one entry per label"):
        focal_loss(x, y, alpha=[0.5, 0.5], mode="sigmoid")
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        Focal(gamma=-2)
