"""The fused ``compile=True`` focal loss against the eager path (itself tested against
textbook formulas and gradcheck in test_focal_loss.py): same values and gradients.

Every softmax case uses 5 classes and float32, so the compiled kernels are shared between
tests (a compile takes seconds; the class count is a static shape). Hitting dynamo's
recompile limit (8 per function) fails the tests instead of falling back to eager.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch

from danlu import Tricks
from danlu.loss import Focal, FocalLoss, focal_loss
from danlu.loss import _focal_fused as fused_module

ALPHA = [0.1, 0.5, 1.0, 2.0, 0.0]


@pytest.fixture(autouse=True)
def no_silent_eager_fallback():
    """Past dynamo's recompile limit the compiled function would quietly run eagerly."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


def logits_and_target(n=37, c=5, seed=0, ignore=-100, spatial=()):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, *spatial, generator=g) * 3
    t = torch.randint(0, c, (n, *spatial), generator=g)
    t.view(-1)[::6] = ignore
    return x, t


def assert_same_as_eager(x, target, **kwargs):
    """Loss and gradient (for a random upstream gradient) of both paths agree."""
    x_eager, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = focal_loss(x_eager, target, **kwargs)
    fused = focal_loss(x_fused, target, compile=True, **kwargs)
    assert fused.shape == eager.shape and fused.dtype == eager.dtype
    torch.testing.assert_close(fused, eager)
    upstream = torch.randn(eager.shape, generator=torch.Generator().manual_seed(1))
    eager.backward(upstream)
    fused.backward(upstream)
    torch.testing.assert_close(x_fused.grad, x_eager.grad)
    return fused


@pytest.mark.parametrize(
    "kwargs, spatial",
    [
        ({"gamma": 2.0, "alpha": ALPHA, "label_smoothing": 0.1}, ()),
        ({"gamma": 0.5, "reduction": "none", "ignore_index": 3}, (4,)),
        ({"gamma": 3.5, "alpha": ALPHA, "reduction": "sum"}, ()),
        ({"gamma": 0.0, "alpha": [1.0] * 5}, ()),  # weighted-CE form, here plain CE
    ],
)
def test_softmax_fused_matches_eager(kwargs, spatial):
    x, t = logits_and_target(ignore=kwargs.get("ignore_index", -100), spatial=spatial)
    fused = assert_same_as_eager(x, t, **kwargs)
    if kwargs["gamma"] == 0.0:
        torch.testing.assert_close(fused, F.cross_entropy(x, t))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": 2.0, "alpha": 0.25, "label_smoothing": 0.1},
        {"gamma": 0.5, "alpha": [0.2, 0.5, 0.9, 0.1, 0.7], "reduction": "none"},
    ],
)
def test_sigmoid_fused_matches_eager(kwargs):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(12, 5, generator=g) * 3
    y = (torch.rand(12, 5, generator=g) > 0.6).float()
    y[0, 1] = y[5, 3] = -100
    assert_same_as_eager(x, y, mode="sigmoid", **kwargs)


def test_large_logits_give_finite_equal_loss_and_grads():
    x = torch.tensor(
        [
            [1e4, -1e4, 0.0, 2.0, 0.0],  # confident and right
            [-1e4, 1e4, 3.0, 0.0, 0.0],  # confident and wrong
            [0.0, 0.0, -1e4, 0.0, 1.0],  # target impossible
            [50.0, -30.0, 0.0, 1.0, 2.0],  # p_t = 1 in fp32
        ]
    )
    t = torch.tensor([0, 0, 2, 0])
    fused = assert_same_as_eager(x, t, gamma=2.0, alpha=ALPHA, label_smoothing=0.1)
    assert torch.isfinite(fused) and fused.item() > 1e3


def test_changing_batch_sizes_do_not_recompile():
    crit = FocalLoss(2.0, ALPHA, label_smoothing=0.1, compile=True)
    crit(*logits_and_target(n=37))  # compiles with a dynamic row count
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (20, 64, 33, 45):
            x, t = logits_and_target(n=n, seed=n)
            torch.testing.assert_close(
                crit(x, t), focal_loss(x, t, 2.0, ALPHA, label_smoothing=0.1)
            )


def test_focal_trick_with_compile_gives_the_eager_gradients():
    torch.manual_seed(0)
    a, b = TinyTextClassifier(), TinyTextClassifier()
    b.load_state_dict(a.state_dict())
    batch = make_batch(seed=3)
    grads = []
    for model, compiled in ((a, False), (b, True)):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        trick = Focal(2.0, [1.0, 0.5, 2.0], compile=compiled)
        Tricks([trick], accumulate=2).step(model, opt, batch, loss_fn)  # no step: grads kept
        grads.append([p.grad for p in model.parameters()])
    assert "compile=True" in repr(trick)
    for ga, gb in zip(*grads):
        torch.testing.assert_close(gb, ga)


def test_autocast_bf16_logits_give_an_fp32_loss_like_cross_entropy():
    x, t = logits_and_target()
    xb = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = focal_loss(xb, t, 2.0, ALPHA, compile=True)
        eager = focal_loss(xb.detach(), t, 2.0, ALPHA)
    assert fused.dtype == eager.dtype == torch.float32
    torch.testing.assert_close(fused, eager, rtol=2e-2, atol=1e-3)
    fused.backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad).all()


def test_inside_an_outer_compile_the_eager_formulation_is_traced():
    x, t = logits_and_target()
    outer = torch.compile(lambda z: focal_loss(z, t, 2.0, ALPHA, compile=True), backend="eager")
    torch.testing.assert_close(outer(x), focal_loss(x, t, 2.0, ALPHA))


def test_double_backward_raises_instead_of_a_silent_zero():
    x, t = logits_and_target()
    x.requires_grad_()
    loss = focal_loss(x, t, 2.0, ALPHA, label_smoothing=0.1, compile=True)
    (grad,) = torch.autograd.grad(loss, x, create_graph=True)  # e.g. a gradient penalty
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        grad.pow(2).sum().backward()


def test_clear_error_when_torch_compile_is_unsupported(monkeypatch):
    monkeypatch.setattr(fused_module, "_COMPILED", {})
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.raises(RuntimeError, match="use compile=False"):
        focal_loss(*logits_and_target(), compile=True)


def test_clear_error_when_compilation_fails(monkeypatch):
    from torch._dynamo.exc import BackendCompilerFailed

    def failing_kernel(*args):
        raise BackendCompilerFailed(print, RuntimeError("no C++ compiler"), None)

    monkeypatch.setattr(fused_module, "_compiled", lambda *key: failing_kernel)
    with pytest.raises(RuntimeError, match="could not build the fused kernel.*compile=False"):
        focal_loss(*logits_and_target(), compile=True)


def test_fused_path_does_not_mutate_inputs():
    x, t = logits_and_target()
    x0, t0 = x.clone(), t.clone()
    focal_loss(x.requires_grad_(), t, 2.0, ALPHA, label_smoothing=0.1, compile=True).backward()
    assert torch.equal(x.detach(), x0) and torch.equal(t, t0)
