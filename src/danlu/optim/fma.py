"""Fine-tuned model averaging (ERNIE-kit "FMA") and model soups.

:func:`average_checkpoints` is the uniform soup of N fine-tuned checkpoints, streamed so one
checkpoint is in memory at a time; :func:`greedy_soup` adds ingredients best-first and keeps
each only if the soup does not get worse (Wortsman et al. 2022,
https://arxiv.org/abs/2203.05482). :class:`FMA` averages the model's epoch-end weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Union

import torch
from torch import nn

from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["average_checkpoints", "greedy_soup", "SoupResult", "FMA"]

Checkpoint = Union[Mapping[str, torch.Tensor], str, "os.PathLike[str]"]


def _load(ckpt: Checkpoint, where: str) -> Mapping[str, torch.Tensor]:
    if isinstance(ckpt, str | os.PathLike):
        ckpt = torch.load(ckpt, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"{where} is a {type(ckpt).__name__}, expected a state_dict (a mapping)")
    for key, value in ckpt.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"{where}: {key!r} is a {type(value).__name__}, not a tensor; pass the model's "
                "state_dict itself (e.g. checkpoint['model'])"
            )
    return ckpt


class _Sum:
    """Running fp64 (fp32 for half types) sum of state_dicts with matching keys and shapes;
    non-float entries are taken from the first state_dict."""

    def __init__(self, first: Mapping[str, torch.Tensor], where: str) -> None:
        self.where = where
        self.dtypes = {k: v.dtype for k, v in first.items()}
        self.shapes = {k: v.shape for k, v in first.items()}
        self.total = {
            k: v.detach().to(dtype=_acc_dtype(v), copy=True) if v.is_floating_point() else v.clone()
            for k, v in first.items()
        }
        self.count = 1

    def check(self, sd: Mapping[str, torch.Tensor], where: str) -> None:
        if sd.keys() != self.shapes.keys():
            missing = sorted(self.shapes.keys() - sd.keys())
            extra = sorted(sd.keys() - self.shapes.keys())
            raise ValueError(
                f"{where} does not match {self.where}: missing keys {missing}, "
                f"unexpected keys {extra}"
            )
        for k, v in sd.items():
            if v.shape != self.shapes[k]:
                raise ValueError(
                    f"{where}: {k!r} has shape {tuple(v.shape)} but {self.where} has "
                    f"{tuple(self.shapes[k])}; only checkpoints of the same architecture average"
                )

    @torch.no_grad()
    def add(self, sd: Mapping[str, torch.Tensor]) -> None:
        for k, v in sd.items():
            if self.dtypes[k].is_floating_point:
                self.total[k].add_(v.to(self.total[k].device))
        self.count += 1

    @torch.no_grad()
    def mean(self, extra: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The average, in the original dtypes; with ``extra``: the average including it
        (without adding it)."""
        n = self.count + (extra is not None)
        out = {}
        for k, t in self.total.items():
            if not self.dtypes[k].is_floating_point:
                out[k] = t.clone()
                continue
            s = t + extra[k].to(t.device) if extra is not None else t
            out[k] = (s / n).to(self.dtypes[k])
        return out


def _acc_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else torch.float64


def _name(ckpt: Checkpoint, i: int) -> str:
    return (
        f"checkpoint {i} ({os.fspath(ckpt)})"
        if isinstance(ckpt, str | os.PathLike)
        else f"checkpoint {i}"
    )


def average_checkpoints(checkpoints: Iterable[Checkpoint]) -> dict[str, torch.Tensor]:
    """Uniform average of state_dicts or ``torch.save`` d state_dict files.

    Streaming: files are loaded one at a time (to CPU) and summed in fp64 (fp32 for
    fp16/bf16 weights); the result has each entry's original dtype. Non-float entries
    (``position_ids``, ``num_batches_tracked``) are taken from the first checkpoint. Keys
    and shapes must match exactly. The inputs are not modified.

    Args:
        checkpoints: state_dicts and/or paths, e.g. the last epochs of one run or runs
            with different seeds fine-tuned from the same pretrained model.

    Example:
        >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
        >>> avg = average_checkpoints([a.state_dict(), b.state_dict()])
        >>> torch.allclose(avg["bias"], (a.bias + b.bias) / 2)
        True
    """
    acc: _Sum | None = None
    for i, ckpt in enumerate(checkpoints):
        where = _name(ckpt, i)
        sd = _load(ckpt, where)
        if acc is None:
            acc = _Sum(sd, where)
        else:
            acc.check(sd, where)
            acc.add(sd)
        del sd
    if acc is None:
        raise ValueError("average_checkpoints needs at least one checkpoint, got none")
    return acc.mean()


class SoupResult(NamedTuple):
    """The greedy soup: its state_dict, the indices of the kept ingredients (best first)
    and its score."""

    state_dict: dict[str, torch.Tensor]
    ingredients: list[int]
    score: float


def greedy_soup(
    checkpoints: Sequence[Checkpoint],
    eval_fn: Callable[[dict[str, torch.Tensor]], float],
    scores: Sequence[float] | None = None,
) -> SoupResult:
    """Greedy model soup: sort the ingredients by their own score, start from the best, and
    add each next one only if the soup's score does not drop.

    ``eval_fn(state_dict) -> float`` scores a state_dict on held-out data, higher is better
    (negate a loss). It is called once per ingredient (unless ``scores`` are given) and once
    per candidate soup. Files are reloaded when needed, so at most two checkpoints and the
    running sum are in memory.

    Args:
        checkpoints: state_dicts and/or paths of fine-tuned models of one architecture.
        eval_fn: the held-out score of a state_dict (load it into a model and evaluate).
        scores: the ingredients' own scores if already known (same order).

    Example:
        >>> sds = [torch.nn.Linear(2, 1).state_dict() for _ in range(3)]
        >>> soup = greedy_soup(sds, lambda sd: -sd["weight"].abs().sum().item())
        >>> soup.ingredients[0] in (0, 1, 2)
        True
    """
    checkpoints = list(checkpoints)
    if not checkpoints:
        raise ValueError("greedy_soup needs at least one checkpoint, got none")
    if scores is None:
        scores = [float(eval_fn(dict(_load(c, _name(c, i))))) for i, c in enumerate(checkpoints)]
    elif len(scores) != len(checkpoints):
        raise ValueError(f"got {len(scores)} scores for {len(checkpoints)} checkpoints")
    order = sorted(range(len(checkpoints)), key=lambda i: -scores[i])
    best = order[0]
    acc = _Sum(
        _load(checkpoints[best], _name(checkpoints[best], best)), _name(checkpoints[best], best)
    )
    kept, score = [best], float(scores[best])
    for i in order[1:]:
        sd = _load(checkpoints[i], _name(checkpoints[i], i))
        acc.check(sd, _name(checkpoints[i], i))
        candidate = float(eval_fn(acc.mean(extra=sd)))
        if candidate >= score:
            acc.add(sd)
            kept.append(i)
            score = candidate
        del sd
    return SoupResult(acc.mean(), kept, score)


class FMA(Trick):
    """Fine-tuned model averaging: a running uniform average of the model's weights at the
    end of every epoch from ``start_epoch`` on (one fp64 sum in memory, on the CPU).

    With ``trainable_only`` (default) the frozen parameters (``requires_grad=False``, e.g.
    a LoRA model's base) are left out of the snapshots and of :meth:`average`: load the
    average with ``model.load_state_dict(fma.average(), strict=False)`` when some are frozen.

    Args:
        model: the model (DDP-wrapped is fine).
        start_epoch: first completed epoch (1-based ``state.epoch``) to include.
        trainable_only: leave out the frozen parameters (default) or keep the whole
            state_dict (``False``).

    Example:
        >>> fma = FMA(model, start_epoch=2)
        >>> tricks = danlu.Tricks([fma])      # call tricks.epoch_end() after each epoch
        >>> model.load_state_dict(fma.average(), strict=False)
    """

    order = Order.AVERAGE

    def __init__(self, model: nn.Module, start_epoch: int = 1, trainable_only: bool = True) -> None:
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 1:
            raise ValueError(f"start_epoch must be an integer >= 1, got {start_epoch!r}")
        if not isinstance(trainable_only, bool):
            raise TypeError(f"trainable_only must be True or False, got {trainable_only!r}")
        self.model, self.start_epoch = unwrap_model(model), start_epoch
        if next(self.model.parameters(), None) is None:
            raise ValueError(f"{type(self.model).__name__} has no parameters: nothing to average")
        self.trainable_only = trainable_only
        self._sum: _Sum | None = None

    def _weights(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().cpu()
            for k, v in self.model.state_dict(keep_vars=True).items()
            if not (self.trainable_only and isinstance(v, nn.Parameter) and not v.requires_grad)
        }

    def snapshot(self) -> None:
        """Add the model's current weights to the average."""
        sd = self._weights()
        if self._sum is None:
            self._sum = _Sum(sd, "the first snapshot")
        else:
            self._sum.add(sd)

    def on_epoch_end(self, state: State) -> None:
        if state.epoch >= self.start_epoch:
            self.snapshot()

    @property
    def count(self) -> int:
        """Snapshots in the average."""
        return 0 if self._sum is None else self._sum.count

    def average(self) -> dict[str, torch.Tensor]:
        """The averaged state_dict (on the CPU; ``model.load_state_dict`` moves it)."""
        if self._sum is None:
            raise RuntimeError(
                f"FMA has no snapshot yet (start_epoch={self.start_epoch}); call "
                "tricks.epoch_end() after each epoch"
            )
        return self._sum.mean()

    def state_dict(self) -> dict[str, Any]:
        if self._sum is None:
            return {"sum": None, "count": 0}
        return {"sum": dict(self._sum.total), "count": self._sum.count}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["sum"] is None:
            self._sum = None
            return
        self._sum = _Sum(self._weights(), "the model")
        self._sum.check(state_dict["sum"], "FMA state_dict")
        self._sum.total = {k: v.clone() for k, v in state_dict["sum"].items()}
        self._sum.count = int(state_dict["count"])

    def __repr__(self) -> str:
        return f"FMA(start_epoch={self.start_epoch}, trainable_only={self.trainable_only})"
