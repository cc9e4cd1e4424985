"""Adversarial noise on attention probabilities (ERNIE-kit's "adversarial on attention").

The clean forward records the gradient ``g_l`` of the loss with respect to every attention
layer's probabilities (softmax output, before attention dropout); the adversarial forward
adds ``r_l = eps · g_l / ‖g_l‖₂`` (one norm per layer) to them. The recording happens
during the ordinary clean pass, so a step costs 2 forward + 2 backward passes (the ERNIE-kit
seed spends 3 forward + 2 backward: it runs a separate pass to get the gradient).

Supported attention:

- Hugging Face ``*SelfAttention`` modules (BERT, RoBERTa, ERNIE, ...) with
  ``attn_implementation="eager"``: SDPA and flash kernels never materialise the
  probabilities. The ``softmax`` inside the attention module is intercepted with a
  ``torch.overrides.TorchFunctionMode``.
- ``nn.MultiheadAttention`` (and so ``nn.TransformerEncoder``): while recording or
  perturbing, its functional core is replaced by an explicit computation of the same
  math that exposes the probabilities (packed projections, no ``bias_k``/``add_zero_attn``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from danlu._embeddings import check_positive
from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["attention_modules", "AttentionNoise"]

_SOFTMAX = {F.softmax, torch.softmax, torch.Tensor.softmax}


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules whose probabilities can be perturbed; raises a ValueError for
    a Hugging Face model that does not use eager attention or when there are none.

    Example:
        >>> layer = nn.TransformerEncoderLayer(8, 2, batch_first=True)
        >>> attention_modules(layer) == [layer.self_attn]
        True
    """
    found = []
    for mod in unwrap_model(model).modules():
        if isinstance(mod, nn.MultiheadAttention):
            found.append(mod)
        elif type(mod).__name__.endswith("SelfAttention") and hasattr(mod, "config"):
            impl = getattr(mod.config, "_attn_implementation", None)
            if impl != "eager":
                raise ValueError(
                    f"attention noise needs the attention probabilities, but {type(mod).__name__} "
                    f"uses attn_implementation={impl!r}; load the model with "
                    "attn_implementation='eager' (from_pretrained(..., attn_implementation="
                    "'eager') or model.set_attn_implementation('eager'))"
                )
            found.append(mod)
    if not found:
        raise ValueError(
            "found no attention module: supported are Hugging Face *SelfAttention modules "
            "with eager attention and nn.MultiheadAttention"
        )
    return found


def _mha_math(probs_hook: Callable[[torch.Tensor], torch.Tensor], query, key, value,
              embed_dim, num_heads, in_proj_weight, in_proj_bias, bias_k, bias_v,
              add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
              key_padding_mask=None, need_weights=True, attn_mask=None,
              use_separate_proj_weight=False, q_proj_weight=None, k_proj_weight=None,
              v_proj_weight=None, static_k=None, static_v=None, average_attn_weights=True,
              is_causal=False):
    """``F.multi_head_attention_forward`` written out, with ``probs_hook`` applied to the
    attention probabilities (shape batch x heads x target x source)."""
    if (bias_k is not None or add_zero_attn or use_separate_proj_weight or static_k is not None
            or static_v is not None or query.dim() != 3):
        raise ValueError(
            "attention noise supports nn.MultiheadAttention with packed projections and "
            "batched inputs (no bias_k/bias_v, add_zero_attn, kdim/vdim or unbatched input)"
        )
    tgt, bsz, _ = query.shape
    src, head_dim = key.shape[0], embed_dim // num_heads
    if query is key and key is value:
        q, k, v = F.linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        w, b = in_proj_weight.chunk(3), (in_proj_bias.chunk(3) if in_proj_bias is not None
                                         else (None,) * 3)
        q, k, v = (F.linear(x, wi, bi) for x, wi, bi in zip((query, key, value), w, b))

    def heads(x, n):
        return x.reshape(n, bsz, num_heads, head_dim).permute(1, 2, 0, 3)

    q, k, v = heads(q, tgt), heads(k, src), heads(v, src)
    scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)
    for mask in (attn_mask, key_padding_mask):
        if mask is None:
            continue
        if mask is key_padding_mask:
            mask = mask.view(bsz, 1, 1, src)
        elif mask.dim() == 3:
            mask = mask.view(bsz, num_heads, tgt, src)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    probs = probs_hook(torch.softmax(scores, dim=-1))
    if training and dropout_p > 0:
        probs = F.dropout(probs, p=dropout_p)
    out = (probs @ v).permute(2, 0, 1, 3).reshape(tgt, bsz, embed_dim)
    out = F.linear(out, out_proj_weight, out_proj_bias)
    if not need_weights:
        return out, None
    return out, probs.mean(dim=1) if average_attn_weights else probs


class _Intercept(TorchFunctionMode):
    """Routes the attention probabilities of the target modules through ``hook``."""

    def __init__(self, owner: AttentionNoise) -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        active = self.owner._active
        if active is not None and func is F.multi_head_attention_forward:
            return _mha_math(self.owner._probs, *args, **kwargs)
        out = func(*args, **kwargs)
        if active is not None and func in _SOFTMAX and out.dim() == 4:
            return self.owner._probs(out)
        return out


class AttentionNoise(Trick):
    """FGM-style adversarial perturbation of attention probabilities.

    Args:
        model: the model (DDP / ``torch.compile`` wrappers are looked through); a Hugging
            Face model must use ``attn_implementation="eager"``.
        eps: norm of the perturbation of each layer's probability tensor (> 0). The
            tensor has batch·heads·L² entries, so eps=1.0 is a small change per row;
            tune it like FGM's eps.

    Example:
        >>> noise = AttentionNoise(model, eps=1.0)
        >>> with noise.recording():               # the clean pass records attention grads
        ...     loss = loss_fn(model, batch)
        >>> loss.backward()
        >>> with noise.perturbed():
        ...     loss_fn(model, batch).backward()
        >>> tricks = danlu.Tricks([AttentionNoise(model, eps=1.0)])   # the same, composed
    """

    order = Order.ADVERSARIAL

    def __init__(self, model: nn.Module, eps: float = 1.0) -> None:
        self.eps = check_positive("eps", eps)
        self.modules = attention_modules(model)
        self._active: nn.Module | None = None
        self._phase: str | None = None  # "record" or "perturb"
        self._grads: list[torch.Tensor | None] = []
        self._noise: list[torch.Tensor | None] = []
        self._calls = 0
        self._attacking = False

    def _probs(self, probs: torch.Tensor) -> torch.Tensor:
        if self._phase == "record":
            if probs.requires_grad:
                j = len(self._grads)
                self._grads.append(None)
                probs.register_hook(lambda g: self._grads.__setitem__(j, g.detach()))
            return probs
        i, self._calls = self._calls, self._calls + 1
        if i >= len(self._noise):
            raise RuntimeError(
                f"the perturbed forward ran more attention layers ({i + 1}) than the recorded "
                f"clean forward ({len(self._noise)}): perturb the same batch and model"
            )
        r = self._noise[i]
        return probs if r is None else probs + r.to(probs.dtype)

    @contextlib.contextmanager
    def _intercept(self, phase: str) -> Iterator[None]:
        def enter(mod, args):
            self._active = mod

        def leave(mod, args, out):
            self._active = None

        handles = [h for m in self.modules for h in (m.register_forward_pre_hook(enter),
                                                     m.register_forward_hook(leave))]
        self._phase, self._calls = phase, 0
        try:
            with _Intercept(self):
                yield
        finally:
            for h in handles:
                h.remove()
            self._phase, self._active = None, None

    @contextlib.contextmanager
    def recording(self) -> Iterator[AttentionNoise]:
        """Forwards inside record their attention probabilities; the gradients arrive with
        the following backward."""
        self._grads = []
        with self._intercept("record"):
            yield self

    def attack(self) -> int:
        """Turn the recorded gradients into perturbations; returns how many layers get
        one (a layer whose gradient norm is 0 or not finite gets none)."""
        noise = []
        for g in self._grads:
            wide = None if g is None else g.to(torch.promote_types(g.dtype, torch.float32))
            norm = None if g is None else float(torch.linalg.vector_norm(wide))
            ok = norm is not None and norm != 0 and math.isfinite(norm)
            noise.append((wide * (self.eps / norm)).to(g.dtype) if ok else None)
        self._noise, self._grads = noise, []
        return sum(r is not None for r in noise)

    @contextlib.contextmanager
    def perturbed(self) -> Iterator[AttentionNoise]:
        """Forwards inside add the perturbation built from the last recorded backward."""
        if not self._grads and not self._noise:
            raise RuntimeError(
                "AttentionNoise.perturbed() needs a clean forward inside recording() and its "
                "backward first"
            )
        if self._grads:
            self.attack()
        try:
            with self._intercept("perturb"):
                yield self
        finally:
            self._noise = []

    # ----------------------------------------------------------------- Trick hooks
    def compute_loss(self, forward, batch, state: State):
        if self._attacking:
            return forward(batch)
        with self._intercept("record"):
            return forward(batch)

    def on_batch(self, batch, state: State):
        self._grads = []
        return batch

    def after_backward(self, closure: Callable[[], torch.Tensor], state: State) -> None:
        if not self._grads:
            return
        if not self.attack():
            self._noise = []
            return  # nothing to perturb with: a second clean pass would double the gradient
        self._attacking = True
        try:
            with self.perturbed():
                closure()
        finally:
            self._attacking = False

    def __repr__(self) -> str:
        return f"AttentionNoise(eps={self.eps})"
