"""Mixup for text: mix where text is continuous (embeddings, hidden states, pooled vectors).

Functional core: :func:`sample_lambda`, :func:`mixup_batch`, :func:`mixup_cross_entropy`,
:func:`soft_cross_entropy`, :func:`mix_targets` and the context manager :func:`mixing` (mixes a
module's output, or input, in place of the batch). Tricks for :class:`~danlu.Tricks`:
:class:`EmbeddingMixup`, :class:`ManifoldMixup` (TMix), :class:`SentenceMixup`; token cutmix is
in :mod:`danlu.data.cutmix`.

Papers: mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412); for text, embedding and
sentence mixup (Guo et al. 2019, https://arxiv.org/abs/1905.08941), TMix / manifold mixup
(Chen et al. 2020, https://arxiv.org/abs/2004.12239).

Randomness: lambda and the permutation are drawn from a generator you pass (a
``torch.Generator`` or a ``numpy.random.Generator``), always on the CPU in float64, so a seed
gives the same lambda and permutation on every device; ``generator=None`` uses a fresh,
unseeded generator (never the global RNG). The tricks own a seeded ``torch.Generator`` and
save its state in ``state_dict()``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from danlu._checks import check_int, check_number
from danlu._embeddings import find_embedding_module
from danlu.core import Order, State, Trick, unwrap_model

__all__ = [
    "sample_lambda",
    "sample_permutation",
    "MixedBatch",
    "mixup_batch",
    "mix_targets",
    "soft_cross_entropy",
    "mixup_cross_entropy",
    "mixing",
    "MixupTrick",
    "EmbeddingMixup",
    "ManifoldMixup",
    "SentenceMixup",
]

Generator = torch.Generator | np.random.Generator | None
Lam = float | torch.Tensor
LossFromLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise TypeError(f"alpha must be a number > 0, got {type(alpha).__name__}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(
            f"alpha must be a finite number > 0 (Beta(alpha, alpha); 0.2-2 is the usual "
            f"range for text), got {alpha!r}"
        )
    return float(alpha)


def _fresh(generator: Generator) -> torch.Generator | np.random.Generator:
    if generator is None:
        g = torch.Generator()
        g.seed()
        return g
    if not isinstance(generator, torch.Generator | np.random.Generator):
        raise TypeError(
            f"generator must be a torch.Generator, a numpy.random.Generator or None, got "
            f"{type(generator).__name__} (numpy's legacy RandomState: use np.random.default_rng)"
        )
    if isinstance(generator, torch.Generator) and generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU generator (lambda is drawn on the CPU), got one on "
            f"{generator.device}"
        )
    return generator


def sample_lambda(alpha: float, generator: Generator = None, max_lambda: bool = False) -> float:
    """Draw lambda ~ Beta(alpha, alpha) (as X / (X + Y) with X, Y ~ Gamma(alpha)).

    Args:
        alpha: Beta concentration, > 0; small alpha (0.2) gives lambda near 0 or 1 (mild
            mixing), alpha = 1 is uniform, large alpha concentrates at 0.5.
        generator: ``torch.Generator`` (CPU) or ``numpy.random.Generator``; None: unseeded.
        max_lambda: return ``max(lambda, 1 - lambda)`` so the first example dominates.

    Example:
        >>> lam = sample_lambda(0.4, torch.Generator().manual_seed(0))
        >>> 0.0 <= lam <= 1.0
        True
    """
    alpha = _check_alpha(alpha)
    g = _fresh(generator)
    if isinstance(g, np.random.Generator):
        lam = float(g.beta(alpha, alpha))
    else:
        x, y = torch._standard_gamma(torch.full((2,), alpha, dtype=torch.float64), generator=g)
        total = float(x + y)
        # both draws can underflow to 0 for tiny alpha: Beta is then a fair coin on {0, 1}
        lam = float(x) / total if total > 0 else float(x >= y)
    return max(lam, 1.0 - lam) if max_lambda else lam


def sample_permutation(n: int, generator: Generator = None) -> torch.Tensor:
    """A random permutation of ``range(n)`` (int64, CPU) from ``generator``."""
    check_int("n", n, 1, fix="the batch size to permute")
    g = _fresh(generator)
    if isinstance(g, np.random.Generator):
        return torch.from_numpy(g.permutation(n).astype(np.int64))
    return torch.randperm(n, generator=g)


class MixedBatch(NamedTuple):
    """Result of :func:`mixup_batch`: mixed inputs, both label sets, lambda, permutation."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float
    index: torch.Tensor


def _check_index(index: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.dtype != torch.long or index.shape != (n,):
        what = (tuple(index.shape), index.dtype) if isinstance(index, torch.Tensor) else index
        raise ValueError(f"index must be an int64 tensor of shape ({n},), got {what}")
    return index


def _check_lam(lam: float) -> float:
    return check_number("lam", lam, 0.0, 1.0, fix="lam weighs the first label set")


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    alpha: float,
    generator: Generator = None,
    lam: float | None = None,
    index: torch.Tensor | None = None,
    max_lambda: bool = False,
) -> MixedBatch:
    """Mix a batch with a permutation of itself: ``x' = lam * x + (1 - lam) * x[index]``.

    Args:
        x: float inputs of shape (N, ...): embeddings, hidden states, features. Token ids
            cannot be mixed: use :class:`EmbeddingMixup` for them.
        y: labels (N,) or soft targets (N, C); returned as ``y_a = y``, ``y_b = y[index]``.
        alpha: Beta(alpha, alpha) concentration, > 0 (0.2-2 recommended).
        generator: torch or numpy generator for lambda and the permutation.
        lam: use this lambda in [0, 1] instead of sampling one.
        index: use this permutation (int64, shape (N,)) instead of sampling one.
        max_lambda: use ``max(lambda, 1 - lambda)`` (ignored when ``lam`` is given).

    Returns:
        ``MixedBatch(x, y_a, y_b, lam, index)``; train with
        ``mixup_cross_entropy(logits, y_a, y_b, lam)``.

    Example:
        >>> x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 1])
        >>> mb = mixup_batch(x, y, alpha=0.4, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(mb.x, mb.lam * x + (1 - mb.lam) * x[mb.index])
        True
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise TypeError(
            f"x must be a floating-point tensor, got {what}; token ids cannot be mixed "
            "directly: use EmbeddingMixup (mixes the input embeddings) or TokenCutMix"
        )
    if x.dim() == 0 or not isinstance(y, torch.Tensor) or y.dim() == 0 or len(y) != len(x):
        raise ValueError(
            f"x and y need the same batch size in dim 0, got x {tuple(x.shape)} and y "
            f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}"
        )
    if len(x) == 0:
        raise ValueError("x is an empty batch (0 rows); mixup needs at least one example")
    alpha = _check_alpha(alpha)
    g = None if (lam is not None and index is not None) else _fresh(generator)
    lam = _check_lam(lam) if lam is not None else sample_lambda(alpha, g, max_lambda)
    index = _check_index(index, len(x)) if index is not None else sample_permutation(len(x), g)
    index = index.to(x.device)
    return MixedBatch(lam * x + (1.0 - lam) * x[index], y, y[index.to(y.device)], lam, index)


def mix_targets(y_a: torch.Tensor, y_b: torch.Tensor, lam: Lam, num_classes: int) -> torch.Tensor:
    """Soft targets ``lam * onehot(y_a) + (1 - lam) * onehot(y_b)`` of shape (N, C);
    ``lam`` is a float or a per-example (N,) tensor."""
    check_int("num_classes", num_classes, 1, fix="the number of logit columns")
    for name, y in (("y_a", y_a), ("y_b", y_b)):
        if y.shape != y_a.shape or y.dim() != 1 or y.is_floating_point():
            raise ValueError(
                f"{name} must be a 1-D tensor of class indices shaped like y_a "
                f"{tuple(y_a.shape)}, got {y.dtype} {tuple(y.shape)}"
            )
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise ValueError(
                f"{name} must hold class indices in [0, {num_classes - 1}] (num_classes="
                f"{num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
            )
    a = F.one_hot(y_a, num_classes).double()
    b = F.one_hot(y_b, num_classes).double()
    lam = lam.double().unsqueeze(-1) if isinstance(lam, torch.Tensor) else lam
    return (lam * a + (1 - lam) * b).float()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against probability targets: ``-(target * log_softmax).sum(-1)``,
    computed in float32 (the same value as ``F.cross_entropy`` with probability targets).

    Example:
        >>> logits = torch.randn(3, 4)
        >>> t = mix_targets(torch.tensor([0, 1, 2]), torch.tensor([3, 1, 0]), 0.7, 4)
        >>> float(soft_cross_entropy(logits, t)) > 0
        True
    """
    if logits.shape != target.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} must have the "
            "same shape (N, C); build soft targets with mix_targets"
        )
    return -(target.float() * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixup_cross_entropy(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: Lam,
    loss_from_logits: LossFromLogits | None = None,
) -> torch.Tensor:
    """Two-label mixup loss ``lam * L(logits, y_a) + (1 - lam) * L(logits, y_b)``.

    Args:
        logits: (N, C) model outputs (half precision is computed in float32).
        y_a, y_b: the two label sets (class indices or soft targets).
        lam: a float, or a per-example (N,) tensor (token cutmix): then the loss is
            ``mean_i(lam_i * l_i(y_a) + (1 - lam_i) * l_i(y_b))``.
        loss_from_logits: ``L(logits, y)``; default ``F.cross_entropy``. With a tensor
            ``lam`` it must return per-example losses (N,) (``reduction="none"``).

    Example:
        >>> logits, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
        >>> loss = mixup_cross_entropy(logits, y, y.flip(0), 0.3)
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> fp32
    for name, y in (("y_a", y_a), ("y_b", y_b)):
        if isinstance(y, torch.Tensor) and (y.dim() == 0 or len(y) != len(logits)):
            raise ValueError(
                f"{name} must give one label per row of logits ({len(logits)} rows), got shape "
                f"{tuple(y.shape)}; pass the y_a / y_b that mixup_batch returned for this batch"
            )
    if isinstance(lam, torch.Tensor):
        if lam.shape != (len(logits),) or not bool(((lam >= 0) & (lam <= 1)).all()):
            raise ValueError(
                f"a per-example lam must be a ({len(logits)},) tensor with values in [0, 1], "
                f"got {lam!r}; use the lam that token_cutmix returns"
            )
        fn = loss_from_logits or (lambda z, t: F.cross_entropy(z, t, reduction="none"))
        la, lb = fn(logits, y_a), fn(logits, y_b)
        if la.shape != (len(logits),):
            raise ValueError(
                f"a per-example lam needs per-example losses of shape ({len(logits)},), "
                f"loss_from_logits returned {tuple(la.shape)}; use reduction='none'"
            )
        lam = lam.to(la.device, la.dtype)
        return (lam * la + (1 - lam) * lb).mean()
    lam = _check_lam(lam)
    fn = loss_from_logits or F.cross_entropy
    return lam * fn(logits, y_a) + (1.0 - lam) * fn(logits, y_b)


def _mix(h: Any, lam: float, index: torch.Tensor) -> Any:
    if isinstance(h, torch.Tensor):
        if len(h) != len(index):
            raise ValueError(
                f"the mixed module's output has batch size {len(h)} but the permutation has "
                f"{len(index)}: the hook must sit on a module whose dim 0 is the batch"
            )
        return lam * h + (1.0 - lam) * h[index.to(h.device)]
    if isinstance(h, tuple | list) and h and isinstance(h[0], torch.Tensor):
        return type(h)([_mix(h[0], lam, index), *h[1:]])  # HF layers: (hidden, ...)
    raise TypeError(
        f"cannot mix a module output of type {type(h).__name__}; hook a module that returns "
        "a tensor or a tuple whose first element is the hidden state"
    )


@contextlib.contextmanager
def mixing(
    module: nn.Module, lam: float, index: torch.Tensor, where: Literal["output", "input"] = "output"
) -> Iterator[list[int]]:
    """While active, ``module``'s output (or first input) is replaced by
    ``lam * h + (1 - lam) * h[index]``; the hook is removed on exit, also on an exception.
    Yields a list that grows by one entry per mixed call (empty: the module never ran).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Flatten())
        >>> ids, index = torch.tensor([[1, 2], [3, 4]]), torch.tensor([1, 0])
        >>> with mixing(model[0], 0.5, index) as calls:
        ...     out = model(ids)
        >>> torch.allclose(out[0], out[1]), len(calls)
        (True, 1)
    """
    _check_lam(lam)
    calls: list[int] = []

    def mix_output(m, args, out):
        calls.append(1)
        return _mix(out, lam, index)

    def mix_input(m, args):
        if not args:
            raise TypeError(
                f"{type(m).__name__} was called with keyword arguments only, so there is no "
                "positional input to mix; mix the previous module's output instead"
            )
        calls.append(1)
        return (_mix(args[0], lam, index), *args[1:])

    if where == "output":
        handle = module.register_forward_hook(mix_output)
    elif where == "input":
        handle = module.register_forward_pre_hook(mix_input)
    else:
        raise ValueError(f"where must be 'output' or 'input', got {where!r}")
    try:
        yield calls
    finally:
        handle.remove()


def _resolve(model: nn.Module, target: nn.Module | str) -> nn.Module:
    if isinstance(target, nn.Module):
        return target
    try:
        return unwrap_model(model).get_submodule(target)
    except AttributeError as err:
        raise ValueError(
            f"the model has no submodule {target!r}; names look like 'bert.encoder.layer' "
            "(see model.named_modules())"
        ) from err


class MixupTrick(Trick):
    """Base of the mixup tricks: samples lambda and the permutation per micro-batch in
    ``on_batch`` and returns the two-label loss from the logits ``forward`` gives back in
    ``compute_loss``. Subclasses say where the mixing happens (``_target``).

    Because the mixing hook is installed inside ``compute_loss``, an adversarial closure
    (FGM, PGD) that re-runs the loss chain sees the same lambda and permutation, and R-Drop
    (which wraps mixup, ``Order.LOSS_WRAP < Order.MIX``) runs both of its passes on the same
    mix. The loss is recomputed from the logits (``replaces_loss``), so ``Tricks`` refuses a
    loss swap (focal, smoothing) inside mixup: pass that loss as ``loss_from_logits``.
    """

    order = Order.MIX
    replaces_loss = True

    def __init__(
        self,
        alpha: float = 0.4,
        max_lambda: bool = False,
        seed: int = 0,
        target_key: str = "labels",
        target_fn: Callable[[Any], torch.Tensor] | None = None,
        loss_from_logits: LossFromLogits | None = None,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.max_lambda = bool(max_lambda)
        self.target_key, self.target_fn = target_key, target_fn
        self.loss_from_logits = loss_from_logits
        self.generator = torch.Generator().manual_seed(int(seed))
        self.lam: Lam = 1.0
        self.index: torch.Tensor | None = None

    def targets(self, batch: Any) -> torch.Tensor:
        """The labels of ``batch`` (``target_fn(batch)`` or ``batch[target_key]``)."""
        if self.target_fn is not None:
            y = self.target_fn(batch)
        elif isinstance(batch, dict) and self.target_key in batch:
            y = batch[self.target_key]
        else:
            keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(
                f"{type(self).__name__} found no labels under {self.target_key!r} in the batch "
                f"({keys}); pass target_key=... or target_fn=lambda batch: ..."
            )
        if not isinstance(y, torch.Tensor) or y.dim() == 0:
            raise ValueError(f"labels must be a tensor with a batch dim, got {y!r}")
        return y

    def on_batch(self, batch: Any, state: State) -> Any:
        n = len(self.targets(batch))
        self.lam = sample_lambda(self.alpha, self.generator, self.max_lambda)
        self.index = sample_permutation(n, self.generator)
        return batch

    def _target(self, model: nn.Module) -> tuple[nn.Module, Literal["output", "input"]] | None:
        """The module to mix and whether its output or its input is mixed (None: the batch
        itself was mixed in ``on_batch``)."""
        raise NotImplementedError

    def compute_loss(self, forward, batch: Any, state: State):
        if self.index is None:
            raise RuntimeError(f"{type(self).__name__}.compute_loss ran before on_batch")
        y = self.targets(batch)
        if len(y) != len(self.index):
            raise ValueError(
                f"{type(self).__name__}: the batch has {len(y)} examples in compute_loss but had "
                f"{len(self.index)} in on_batch; a trick outside mixup changed the batch size "
                "(RDrop(mode='duplicate') does): use RDrop(mode='two_pass') with mixup"
            )
        target = self._target(state.model)
        hook = contextlib.nullcontext([1])
        if target is not None:
            hook = mixing(target[0], self.lam, self.index, where=target[1])
        with hook as calls:
            _, logits = forward(batch)
        if not calls:
            raise ValueError(
                f"{type(self).__name__}: the module to mix ({type(target[0]).__name__}) did not "
                "run in the forward pass, so nothing was mixed; hook a module the model calls"
            )
        if not isinstance(logits, torch.Tensor):
            raise ValueError(
                f"{type(self).__name__} needs the logits: make loss_fn return (loss, logits)"
            )
        y = y.to(logits.device)
        index = self.index.to(logits.device)
        return mixup_cross_entropy(logits, y, y[index], self.lam, self.loss_from_logits), logits

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generator.set_state(state_dict["generator"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha}, max_lambda={self.max_lambda})"


class EmbeddingMixup(MixupTrick):
    """Mixup of the input embeddings (Guo et al. 2019): a forward hook on the input
    embedding replaces its output ``e`` by ``lam * e + (1 - lam) * e[index]``; works for any
    HF model (``get_input_embeddings()``) or a model with one largest ``nn.Embedding``.

    Args:
        alpha: Beta(alpha, alpha), > 0; 0.2-0.4 is a good start for fine-tuning.
        embedding: the module to mix, or its name; default: found automatically.
        mask_key: in a dict batch, the attention mask is replaced (on a copy) by the union
            of both examples' masks, so no real token of either is masked out; None: keep.
        **kwargs: ``max_lambda``, ``seed``, ``target_key``, ``target_fn``,
            ``loss_from_logits`` (see :class:`MixupTrick`).

    Example:
        >>> tricks = Tricks([EmbeddingMixup(alpha=0.4), FGM(model)])
        >>> state = tricks.step(model, opt, batch, loss_fn)  # loss_fn returns (loss, logits)
    """

    def __init__(
        self,
        alpha: float = 0.4,
        embedding: nn.Module | str | None = None,
        mask_key: str | None = "attention_mask",
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, **kwargs)
        self.embedding, self.mask_key = embedding, mask_key

    def on_batch(self, batch: Any, state: State) -> Any:
        batch = super().on_batch(batch, state)
        if self.mask_key is None or not isinstance(batch, dict) or self.mask_key not in batch:
            return batch
        mask = batch[self.mask_key]
        return {**batch, self.mask_key: torch.maximum(mask, mask[self.index.to(mask.device)])}

    def _target(self, model: nn.Module) -> tuple[nn.Module, Literal["output", "input"]]:
        if self.embedding is None:
            return find_embedding_module(model), "output"
        return _resolve(model, self.embedding), "output"


class ManifoldMixup(MixupTrick):
    """Manifold mixup / TMix (Chen et al. 2020): mix the hidden states output by one layer
    of a stack, chosen per micro-batch at random (from ``choices``) or fixed.

    Args:
        layers: a list of modules, an ``nn.ModuleList`` / ``nn.Sequential`` (a stack), a
            single module, or a dotted name (e.g. ``"bert.encoder.layer"``). A layer's
            output is a tensor (N, ...) or a tuple whose first element is the hidden state.
        alpha: Beta(alpha, alpha), > 0 (TMix: 0.2-2; larger for mid layers).
        choices: indices of ``layers`` to draw from each micro-batch (TMix uses BERT layers
            7, 9, 12 -> ``choices=[6, 8, 11]``); default: all layers.
        **kwargs: as :class:`MixupTrick`.

    Example:
        >>> mix = ManifoldMixup("bert.encoder.layer", alpha=2.0, choices=[2, 3])
    """

    def __init__(
        self,
        layers: Sequence[nn.Module] | nn.Module | str,
        alpha: float = 0.4,
        choices: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, **kwargs)
        if choices is not None:
            choices = [int(c) for c in choices]
            if not choices:
                raise ValueError("choices must name at least one layer index, got []")
        self.layers, self.choices = layers, choices
        self.layer: int = 0

    def _stack(self, model: nn.Module) -> list[nn.Module]:
        layers = _resolve(model, self.layers) if isinstance(self.layers, str) else self.layers
        stack = (
            list(layers)
            if isinstance(layers, nn.ModuleList | nn.Sequential | Sequence)
            else [layers]
        )
        for c in self.choices or ():
            if not -len(stack) <= c < len(stack):
                raise ValueError(f"choices holds layer {c}, but there are {len(stack)} layers")
        return stack

    def on_batch(self, batch: Any, state: State) -> Any:
        batch = super().on_batch(batch, state)
        n = len(self._stack(state.model)) if self.choices is None else len(self.choices)
        pick = int(torch.randint(n, (1,), generator=self.generator))
        self.layer = pick if self.choices is None else self.choices[pick]
        return batch

    def _target(self, model: nn.Module) -> tuple[nn.Module, Literal["output", "input"]]:
        return self._stack(model)[self.layer], "output"


class SentenceMixup(MixupTrick):
    """Sentence-level mixup (Guo et al. 2019): mix the pooled sentence vectors, e.g. the
    output of ``"bert.pooler"`` or the input of the classifier head.

    Args:
        module: the module (or dotted name) whose output (or first input) is the
            (N, H) sentence vector, e.g. ``"bert.pooler"`` or ``"classifier"``.
        alpha: Beta(alpha, alpha), > 0.
        where: ``"output"`` (default) or ``"input"`` (a pre-hook on the head).
        **kwargs: as :class:`MixupTrick`.

    Example:
        >>> mix = SentenceMixup("classifier", alpha=0.4, where="input")
    """

    def __init__(
        self,
        module: nn.Module | str,
        alpha: float = 0.4,
        where: Literal["output", "input"] = "output",
        **kwargs: Any,
    ) -> None:
        super().__init__(alpha, **kwargs)
        if where not in ("output", "input"):
            raise ValueError(f"where must be 'output' or 'input', got {where!r}")
        self.module, self.where = module, where

    def _target(self, model: nn.Module) -> tuple[nn.Module, Literal["output", "input"]]:
        return _resolve(model, self.module), self.where
