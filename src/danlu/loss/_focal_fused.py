"""The fused ``focal_loss(..., compile=True)`` path: one ``torch.compile`` kernel computes the
softmax focal loss and its gradient in the forward pass (the backward is one multiply);
sigmoid mode compiles the eager formula. Imported by :mod:`danlu.loss.focal` on first use.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable

from danlu.loss.focal import _sigmoid_focal


def _focal_and_slope(nll: torch.Tensor, gamma: float):
    """``f = (1 - p)^gamma · nll`` and ``df/dnll = q^g (1 + g·p·nll/q)`` (``q = 1 - p``;
    finite as ``q -> 0``, where ``nll/q -> 1``), elementwise, without autograd."""
    if gamma == 0:
        return nll, torch.ones_like(nll)
    q = -torch.expm1(-nll)
    qg = q * q if gamma == 2 else q.pow(gamma)
    ratio = torch.where(q > 0, nll / q, 1.0)
    return qg * nll, qg * (1.0 + gamma * torch.exp(-nll) * ratio)


def _softmax_loss_and_grad(x, target, gamma, a, ignore_index, eps, reduction):
    """Softmax focal loss of ``(M, C)`` logits and its gradient for a unit upstream gradient,
    written as plain tensor code for one ``torch.compile`` kernel (run without autograd).

    With ``n_c = -log p_c`` and per-row class weights ``u_c = alpha_c · q_c`` (``q`` the
    smoothed one-hot target) the row loss is ``sum_c u_c f(n_c)`` and its gradient is
    ``p_j · S - u_j f'(n_j)`` with ``S = sum_c u_c f'(n_c)``: the softmax is exponentiated
    once and reused, where cross-entropy exponentiates again in its backward. The exp and
    per-row tensors are returned as well, which makes inductor store them once instead of
    recomputing them for every element.
    """
    n_classes = x.shape[1]
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)
    scale = keep.to(x.dtype)
    if reduction == "mean":
        scale = scale / scale.sum()
    z = x - x.amax(1, keepdim=True)
    e = z.exp()
    s = e.sum(1, keepdim=True)
    log_p = z - s.log()
    f_t, slope_t = _focal_and_slope(-log_p.gather(1, safe[:, None]).squeeze(1), gamma)
    u_t = scale * (1.0 - eps) if a is None else scale * (1.0 - eps) * torch.take(a, safe)
    w_t = u_t * slope_t
    loss = u_t * f_t
    coef = torch.where(torch.arange(n_classes, device=x.device) == safe[:, None], w_t[:, None], 0)
    stored = (e, w_t)
    if eps > 0:
        f_all, slope_all = _focal_and_slope(-log_p, gamma)
        u = (eps / n_classes) * scale[:, None] * (1.0 if a is None else a)
        loss = loss + (u * f_all).sum(1)
        coef = coef + u * slope_all
        row = coef.sum(1, keepdim=True)
        stored += (coef,)
    else:
        row = w_t[:, None]
    grad = e * (row / s) - coef
    return (loss if reduction == "none" else loss.sum()), grad, *stored


class _FusedSoftmaxFocal(torch.autograd.Function):
    """Forward: one compiled kernel gives the loss and the gradient; backward: a multiply."""

    @staticmethod
    def forward(ctx, logits, target, kernel, gamma, a, ignore_index, eps, reduction):
        # new tensor objects, so the shape marks below leave the caller's tensors alone; and
        # requires_grad=False, so the kernel is compiled as an inference graph
        x, t = logits.detach(), target.detach()
        if x.dim() > 2:  # (N, C, d...) -> (N·d..., C)
            x, t = x.movedim(1, -1).reshape(-1, x.shape[1]), t.reshape(-1)
        # rows dynamic from the first compile (no recompile when the batch size changes);
        # the class count static, which gives a faster kernel
        torch._dynamo.maybe_mark_dynamic(x, 0)
        torch._dynamo.maybe_mark_dynamic(t, 0)
        torch._dynamo.mark_static(x, 1)
        loss, grad, *_ = kernel(x, t, gamma, a, ignore_index, eps, reduction)
        ctx.save_for_backward(grad)
        ctx.reduction, ctx.shape, ctx.dtype = reduction, logits.shape, logits.dtype
        low = logits.dtype in (torch.float16, torch.bfloat16)
        autocast = low and torch.is_autocast_enabled(logits.device.type)
        loss = loss.view(target.shape) if reduction == "none" else loss
        return loss.to(torch.float32 if autocast else logits.dtype)  # as F.cross_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        grad = grad * (grad_out.reshape(-1, 1) if ctx.reduction == "none" else grad_out)
        if len(ctx.shape) > 2:
            n, c, *rest = ctx.shape
            grad = grad.view(n, *rest, c).movedim(-1, 1)
        return grad.to(ctx.dtype), None, None, None, None, None, None, None


_COMPILED: dict[tuple[str, str, torch.dtype], Callable] = {}


def _compiled(mode: str, reduction: str, dtype: torch.dtype) -> Callable:
    """The ``torch.compile``d core of ``mode``, created on first use and cached per
    (mode, reduction, dtype). Softmax mode marks the rows dynamic and the classes static;
    sigmoid mode relies on dynamo's automatic dynamic shapes (one recompile at the first
    change of shape). (``dynamic=True`` would make the class count dynamic too, and the
    kernel ~25% slower.)"""
    key = (mode, reduction, dtype)
    if key not in _COMPILED:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError(
                "focal_loss(compile=True) needs torch.compile, which is not supported on "
                f"this Python/torch ({torch.__version__}); use compile=False (eager path)"
            )
        fn = _softmax_loss_and_grad if mode == "softmax" else _sigmoid_focal
        _COMPILED[key] = torch.compile(fn)
    return _COMPILED[key]


def run_compiled(logits, target, gamma, a, ignore_index, mode, reduction, eps):
    from torch._dynamo.exc import BackendCompilerFailed

    kernel = _compiled(mode, reduction, logits.dtype)
    try:
        if mode == "softmax":
            return _FusedSoftmaxFocal.apply(
                logits, target, kernel, gamma, a, ignore_index, float(eps), reduction
            )
        return kernel(logits, target, gamma, a, ignore_index, reduction, eps)
    except BackendCompilerFailed as err:
        raise RuntimeError(
            "focal_loss(compile=True): torch.compile could not build the fused kernel "
            "(inductor needs a working C++ compiler on CPU, Triton on GPU); install one or "
            f"use compile=False (eager path). Cause: {str(err).splitlines()[0]}"
        ) from err
