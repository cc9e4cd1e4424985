"""Focal loss (Lin et al. 2017, https://arxiv.org/abs/1708.02002), softmax and sigmoid forms.

With soft targets ``q`` (one-hot, or smoothed by ``label_smoothing``) and class weights
``alpha``, both forms compute per example

    FL = sum_c  alpha_c · q_c · (1 - p_c)^gamma · (-log p_c)

over the C classes (softmax) or over {positive, negative} of every element (sigmoid, where
the negative side is weighted by ``1 - alpha``). With one-hot targets this is the paper's
``-alpha_t (1 - p_t)^gamma log p_t``; with ``gamma=0`` and ``alpha=None`` it is
cross-entropy (softmax) or binary cross-entropy with logits (sigmoid).

Everything works on ``nll = -log p`` (from the fused ``F.cross_entropy(reduction="none")``
kernel, ``-log_softmax`` or ``softplus``) and ``1 - p = -expm1(-nll)``; for
``0 < gamma < 1``, where autograd of ``(1 - p)^gamma`` is NaN at ``p = 1``, the gradient is
written by hand. Gradients are finite for every ``gamma >= 0``, also for logits of ±1e4. Only the target's
``-log p_t`` is modulated, so the default path costs one cross-entropy plus a few per-row
operations.

``compile=True`` runs an optional fused path through ``torch.compile``: in softmax mode one
inductor kernel computes the loss *and* its gradient in the forward pass (a single exp pass
over the logits; cross-entropy itself makes two, one forward and one backward), the
backward is one multiplication. Sigmoid mode compiles the eager function (forward and
backward kernels through AOTAutograd). Compilation happens lazily on the first call of each
(mode, reduction, dtype), with dynamic shapes, so changing batch sizes do not recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from danlu._checks import check_ignore_index
from danlu.loss._swap import LossSwap

__all__ = ["focal_loss", "FocalLoss", "Focal"]

Mode = Literal["softmax", "sigmoid"]
Reduction = Literal["mean", "sum", "none"]
Alpha = float | Sequence[float] | torch.Tensor | None


class _FocalTermSmallGamma(torch.autograd.Function):
    """Elementwise ``(1 - p)^gamma · nll`` of ``nll = -log p`` for ``0 < gamma < 1``.

    Autograd of ``q ** gamma`` (``q = 1 - p``) gives ``inf · 0 = nan`` at ``p = 1`` when
    ``gamma < 1``; the derivative ``q^g · (1 + g·p·(nll/q))``, with ``nll/q -> 1`` as
    ``q -> 0``, is finite. It is formed in the forward; the backward is one multiplication.
    """

    @staticmethod
    def forward(ctx, nll: torch.Tensor, gamma: float) -> torch.Tensor:
        m = nll.neg()
        q = torch.expm1(m).neg_()
        qg = q.pow(gamma)
        if ctx.needs_input_grad[0]:
            ratio = torch.where(q > 0, nll / q, 1.0)
            ctx.save_for_backward(ratio.mul_(m.exp_()).mul_(gamma).add_(1.0).mul_(qg))
        return qg.mul_(nll)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (d,) = ctx.saved_tensors
        return grad * d, None


def _check_gamma(gamma: float) -> float:
    if (
        isinstance(gamma, bool)
        or not isinstance(gamma, int | float)
        or not (math.isfinite(gamma) and gamma >= 0)
    ):
        raise ValueError(
            f"gamma must be a finite number >= 0 (0 = cross-entropy, 2 is the paper's "
            f"default), got {gamma!r}"
        )
    return float(gamma)


def _check_common(reduction: str, label_smoothing: float, mode: str, ignore_index: int) -> None:
    check_ignore_index(ignore_index)
    if mode not in ("softmax", "sigmoid"):
        raise ValueError(f"mode must be 'softmax' or 'sigmoid', got {mode!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not (isinstance(label_smoothing, int | float) and 0.0 <= label_smoothing <= 1.0):
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")


def _alpha_tensor(
    alpha: Alpha, mode: str, n_classes: int, like: torch.Tensor, check_values: bool = True
):
    """alpha as a tensor on ``like``'s device; values are checked while on the CPU (a GPU
    tensor is not read back, to avoid a device sync every step)."""
    if alpha is None:
        return None
    a = torch.as_tensor(alpha, dtype=like.dtype)
    if mode == "softmax" and a.shape != (n_classes,):
        raise ValueError(
            f"alpha for mode='softmax' must be a sequence of {n_classes} per-class weights "
            f"(one per logit column), got shape {tuple(a.shape)}; a scalar alpha is only "
            "for mode='sigmoid'"
        )
    if mode == "sigmoid" and a.dim() > 0 and a.shape != (n_classes,):
        raise ValueError(
            f"alpha for mode='sigmoid' must be a scalar or have one entry per label "
            f"(the last logit dim, {n_classes}), got shape {tuple(a.shape)}"
        )
    hi = math.inf if mode == "softmax" else 1.0
    if check_values and a.device.type == "cpu":  # in Python: cheaper than tensor ops
        values = a.tolist() if a.dim() else [a.item()]
        if not all(0 <= v <= hi for v in values):  # NaN fails too
            allowed = ">= 0" if mode == "softmax" else "in [0, 1]"
            raise ValueError(f"alpha values must be {allowed} for mode={mode!r}, got {alpha!r}")
    return a.to(like.device)


def _check_target(logits: torch.Tensor, target: torch.Tensor, mode: str) -> None:
    if mode == "sigmoid":
        if target.shape != logits.shape:
            raise ValueError(
                f"mode='sigmoid' needs a target of the logits' shape {tuple(logits.shape)} "
                f"(0/1 or probabilities per element), got {tuple(target.shape)}"
            )
    elif target.is_floating_point() or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"mode='softmax' needs integer class indices of shape "
            f"{tuple(logits.shape[:1] + logits.shape[2:])} for logits {tuple(logits.shape)} "
            f"(classes on dim 1, as in F.cross_entropy), got {target.dtype} "
            f"{tuple(target.shape)}"
        )


def _reduce(loss: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    """Sum, or average over the kept entries (ignored entries are already 0)."""
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / keep.sum()


def _focal(nll: torch.Tensor, gamma: float) -> torch.Tensor:
    """``(1 - p)^gamma · nll`` for ``nll = -log p >= 0``, with ``1 - p = -expm1(-nll)``."""
    if gamma == 0:
        return nll
    if gamma < 1:
        return _FocalTermSmallGamma.apply(nll, gamma)
    if gamma == 2:  # (p - 1)^2: one multiply, no sign flip and no pow (fewer autograd nodes)
        qn = torch.expm1(-nll)
        return qn * qn * nll
    return (-torch.expm1(-nll)).pow(gamma) * nll  # autograd is finite for gamma >= 1


def _softmax_focal(logits, target, gamma, a, ignore_index, reduction, label_smoothing):
    keep = target != ignore_index
    # -log p_t from the fused cross-entropy kernel: 0 (and no gradient) at ignored entries
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    loss = _focal(ce, gamma)
    if a is not None:
        safe = target.clamp_min(0) if ignore_index < 0 else torch.where(keep, target, 0)
        loss = loss * torch.take(a, safe)  # alpha_t; ignored entries have loss 0 anyway
    if label_smoothing > 0:
        n_classes = logits.shape[1]
        terms = _focal(-F.log_softmax(logits, dim=1), gamma)
        if a is not None:
            terms = terms * a.view(1, -1, *([1] * (logits.dim() - 2)))
        smooth = terms.sum(1).masked_fill_(~keep, 0.0)
        loss = (1.0 - label_smoothing) * loss + (label_smoothing / n_classes) * smooth
    return _reduce(loss, keep, reduction)


def _sigmoid_focal(logits, target, gamma, a, ignore_index, reduction, label_smoothing):
    keep = target != ignore_index
    t = torch.where(keep, target, 0).to(logits.dtype)
    if label_smoothing > 0:
        t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
    pos = _focal(F.softplus(-logits), gamma)  # softplus(-x) = -log sigmoid(x)
    neg = _focal(F.softplus(logits), gamma)  # softplus(x) = -log(1 - sigmoid(x))
    if a is None:
        loss = t * pos + (1.0 - t) * neg
    else:
        loss = a * t * pos + (1.0 - a) * (1.0 - t) * neg
    return _reduce(loss.masked_fill(~keep, 0.0), keep, reduction)


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: Alpha = None,
    *,
    mode: Mode = "softmax",
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    compile: bool = False,
) -> torch.Tensor:
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, computed in log space.

    Args:
        logits: softmax: ``(N, C)`` or ``(N, C, d1, ...)`` (classes on dim 1, as in
            ``F.cross_entropy``); sigmoid: any shape, one independent binary logit per element.
        target: softmax: class indices ``(N,)`` / ``(N, d1, ...)``; sigmoid: 0/1 labels or
            probabilities of the logits' shape.
        gamma: focusing parameter >= 0 (default 2; 0 gives cross-entropy).
        alpha: softmax: per-class weights, a sequence/tensor of length C (>= 0); sigmoid: a
            scalar or per-label (last dim) weight in [0, 1] of the positive side, the negative
            side gets ``1 - alpha`` (the paper uses 0.25). ``None``: no weighting.
        mode: ``"softmax"`` (multi-class) or ``"sigmoid"`` (binary / multi-label).
        ignore_index: targets equal to it contribute nothing and are left out of the mean.
        reduction: ``"mean"`` (over non-ignored examples; note ``F.cross_entropy(weight=)``
            divides by the sum of weights instead), ``"sum"`` or ``"none"``.
        label_smoothing: in [0, 1]; mixes the one-hot target with the uniform distribution
            (over C classes, or 0.5/0.5 in sigmoid mode), as ``F.cross_entropy`` does.
        compile: use the fused ``torch.compile`` path (same values and gradients; the first
            call per mode/reduction/dtype compiles for a few seconds, the first change of
            batch size once more). Its gradient is first-order only (no double backward).
            Inside code that is itself being compiled, the eager formulation is used (the
            outer compile fuses it).

    Returns:
        the loss; shape of ``target`` for ``reduction="none"``, else a scalar.

    Raises:
        RuntimeError: ``compile=True`` where ``torch.compile`` is unsupported or fails.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
        >>> focal_loss(logits, torch.tensor([0]), gamma=0.0)   # == F.cross_entropy
        tensor(0.1698)
    """
    gamma = _check_gamma(gamma)
    _check_common(reduction, label_smoothing, mode, ignore_index)
    return _focal_loss(
        logits, target, gamma, alpha, mode, ignore_index, reduction, label_smoothing, compile
    )


def _focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    alpha: Alpha,
    mode: str,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    compile: bool,
    alpha_checked: bool = False,
) -> torch.Tensor:
    """:func:`focal_loss` after the argument checks (``FocalLoss`` makes them once)."""
    if mode == "softmax" and gamma == 0 and alpha is None:
        return F.cross_entropy(
            logits,
            target,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    _check_target(logits, target, mode)
    n_classes = logits.shape[1] if mode == "softmax" else logits.shape[-1:].numel()
    a = _alpha_tensor(alpha, mode, n_classes, logits, check_values=not alpha_checked)
    if compile and not torch.compiler.is_compiling():
        from danlu.loss._focal_fused import run_compiled

        return run_compiled(
            logits, target, gamma, a, ignore_index, mode, reduction, label_smoothing
        )
    fn = _softmax_focal if mode == "softmax" else _sigmoid_focal
    return fn(logits, target, gamma, a, ignore_index, reduction, label_smoothing)


class FocalLoss(nn.Module):
    """Drop-in ``nn.Module`` for :func:`focal_loss` (alpha moves with ``.to(device)``; the
    arguments are checked once here, not at every call). ``compile=True``: the fused path.

    Example:
        >>> criterion = FocalLoss(gamma=2.0, alpha=[1.0, 2.0, 4.0])
        >>> loss = criterion(torch.randn(8, 3), torch.randint(0, 3, (8,)))
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Alpha = None,
        *,
        mode: Mode = "softmax",
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.gamma = _check_gamma(gamma)
        _check_common(reduction, label_smoothing, mode, ignore_index)
        self.mode, self.ignore_index = mode, ignore_index
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)
        self.compile = bool(compile)
        a = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if a is not None:
            _alpha_tensor(a, mode, a.numel() if a.dim() else 1, a)
        self.register_buffer("alpha", a)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _focal_loss(
            logits,
            target,
            self.gamma,
            self.alpha,
            self.mode,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            self.compile,
            alpha_checked=self.alpha is not None,
        )

    def extra_repr(self) -> str:
        fused = ", compile=True" if self.compile else ""
        return f"gamma={self.gamma}, mode={self.mode!r}, reduction={self.reduction!r}{fused}"


class Focal(LossSwap):
    """Trick: replace the training loss by the focal loss of the model's logits.

    ``loss_fn`` must return ``(loss, logits)``; the labels come from ``batch[target_key]``
    or ``target_fn(batch)``. Other keyword arguments go to :func:`focal_loss`.

    Example:
        >>> import danlu
        >>> tricks = danlu.Tricks([Focal(gamma=2.0)])   # dict batches with "labels"
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: Alpha = None,
        *,
        target_key: str = "labels",
        target_fn: Callable[[Any], torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(target_key, target_fn)
        self.criterion = FocalLoss(gamma, alpha, **kwargs)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.criterion.to(logits.device)(logits, target)

    def __repr__(self) -> str:
        return f"Focal({self.criterion.extra_repr()})"
