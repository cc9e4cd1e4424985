"""Exponential moving average (EMA) of model weights.

``shadow = decay · shadow + (1 − decay) · param`` after optimizer steps, with the shadow
kept in fp32 for fp16/bf16 models, buffers copied, and the averaged weights swapped in for
evaluation. The update is one ``torch._foreach_lerp_`` per (device, dtype) group, the same
kernel as ``torch.optim.swa_utils.get_ema_multi_avg_fn``.

Only the trainable parameters are averaged by default (a frozen parameter's average is
itself), so a LoRA/PEFT model's shadow holds only its adapters. Under FSDP2
(``fully_shard``) each rank averages its own shard (no gather per step) and
:meth:`EMA.full_state_dict` gathers the full shadow on rank 0.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from danlu.core import Order, State, Trick, unwrap_model

__all__ = ["ema_decay", "ema_update_", "EMA"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_decay(decay: float) -> float:
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 < decay <= 1.0:
        raise ValueError(
            f"decay must be in (0, 1], got {decay!r}; typical values are 0.99-0.9999 "
            "(closer to 1 averages over more steps: about 1/(1-decay))"
        )
    return float(decay)


def ema_decay(step: int, decay: float, warmup: bool = False) -> float:
    """The decay used at optimizer step ``step`` (1-based): ``decay``, or with ``warmup``
    ``min(decay, (1 + step) / (10 + step))`` as in TensorFlow's ExponentialMovingAverage, so
    early averages do not cling to the random initial weights.

    Example:
        >>> ema_decay(1, 0.999, warmup=True)   # (1 + 1) / (10 + 1)
        0.18181818181818182
        >>> ema_decay(10_000, 0.999, warmup=True)
        0.999
    """
    decay = _check_decay(decay)
    return min(decay, (1.0 + step) / (10.0 + step)) if warmup else decay


@torch.no_grad()
def ema_update_(
    shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], decay: float
) -> None:
    """In place: ``shadow[i] = decay · shadow[i] + (1 − decay) · params[i]`` for all i.

    Tensors are grouped by (device, dtype) and updated with one ``torch._foreach_lerp_`` per
    group; a shadow of a wider dtype than its parameter (fp32 shadow of a bf16 weight) is
    updated with ``_foreach_mul_`` + ``_foreach_add_``, which promote without a copy.

    Example:
        >>> shadow, params = [torch.zeros(2)], [torch.ones(2)]
        >>> ema_update_(shadow, params, decay=0.9)
        >>> shadow[0]
        tensor([0.1000, 0.1000])
    """
    decay = _check_decay(decay)
    if len(shadow) != len(params):
        raise ValueError(f"shadow has {len(shadow)} tensors but params has {len(params)}")
    _lerp_groups(_group(shadow, params), decay)


_Groups = list[tuple[list[torch.Tensor], list[torch.Tensor], bool]]


def _group(shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor]) -> _Groups:
    groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for s, p in zip(shadow, params):
        if not s.is_floating_point():
            raise TypeError(f"EMA averages floating-point tensors, got a {s.dtype} shadow")
        s_list, p_list = groups.setdefault((s.device, s.dtype, p.dtype), ([], []))
        s_list.append(s)
        p_list.append(p)
    return [(s_list, p_list, key[1] == key[2]) for key, (s_list, p_list) in groups.items()]


def _lerp_groups(groups: _Groups, decay: float) -> None:
    for s_list, p_list, same_dtype in groups:
        if same_dtype:
            torch._foreach_lerp_(s_list, p_list, 1.0 - decay)
        else:
            torch._foreach_mul_(s_list, decay)
            torch._foreach_add_(s_list, p_list, alpha=1.0 - decay)


def _shadow_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in _LOW_PRECISION else t.dtype


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of an FSDP2 ``DTensor`` (a view: in-place ops reach the parameter),
    or ``t`` itself."""
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The FSDP2 (``fully_shard``) modules of ``model``; ``[]`` without FSDP2 (whoever
    sharded the model imported ``torch.distributed.fsdp``, so nothing is imported here)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None or not hasattr(fsdp, "FSDPModule"):
        return []
    return [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)]


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class EMA(Trick):
    """Exponential moving average of a model's parameters, as a drop-in object and a
    :class:`~danlu.Trick`.

    The shadow starts as a copy of the model at construction and is updated every
    ``every`` optimizer steps. Parameters of fp16/bf16 models are averaged in an fp32
    shadow; buffers (e.g. BatchNorm statistics) are copied, not averaged. A
    DDP-/compile-wrapped model is unwrapped (every rank then holds the same shadow).
    Moving or casting the model later is fine; adding or replacing submodules is not
    (``apply_to`` raises): create the EMA once the model is built.

    By default only the parameters with ``requires_grad`` at construction are averaged:
    for a ``peft`` LoRA model that is the adapters, so the shadow, :meth:`state_dict` and
    the per-step cost are adapter-sized (save the averaged adapter with
    ``with ema.averaged(): model.save_pretrained(dir)``). Unfreezing layers later does not
    add them: create the EMA after choosing what trains, or pass ``trainable_only=False``.

    Under FSDP2 (``torch.distributed.fsdp.fully_shard``) the parameters are ``DTensor``
    shards: the shadow is a ``DTensor`` of the same sharding, each rank averages only its
    shard, and :meth:`full_state_dict` gathers the full shadow on rank 0. Create the EMA after
    ``fully_shard`` (which replaces the parameters).

    Compared with ``AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))``: that
    class copies the model on its *first* ``update_parameters`` call and averages from the
    second on; this one starts from the weights at construction, so one ``EMA`` update equals
    an ``AveragedModel`` whose first update ran at construction time.

    Args:
        model: the model to average (possibly wrapped in DDP).
        decay: in (0, 1]; 0.999 for a few thousand steps, 0.9999 for long runs, about
            ``1 - 1/steps_to_average``. 1 freezes the shadow.
        warmup: use ``min(decay, (1+step)/(10+step))`` (see :func:`ema_decay`).
        every: update every ``every`` optimizer steps (>= 1); the decay is not adjusted,
            so use a smaller decay with a larger ``every``.
        trainable_only: average only the parameters with ``requires_grad`` (default), or
            all of them (``False``; frozen ones then cost memory and time for nothing).

    Example:
        >>> import torch, danlu
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> ema = EMA(model, decay=0.99)
        >>> model(torch.randn(3, 4)).sum().backward(); opt.step()
        >>> ema.update()                 # drop-in: after optimizer.step()
        >>> with ema.averaged():         # evaluate with the averaged weights
        ...     out = model(torch.randn(3, 4))
        >>> tricks = danlu.Tricks([EMA(model, decay=0.99)])   # or as a Trick
    """

    order = Order.AVERAGE

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        warmup: bool = False,
        every: int = 1,
        trainable_only: bool = True,
    ) -> None:
        self.decay = _check_decay(decay)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (optimizer steps), got {every!r}")
        if not isinstance(trainable_only, bool):
            raise TypeError(f"trainable_only must be True or False, got {trainable_only!r}")
        self.model = unwrap_model(model)
        # FSDP2 leaves the root's parameters unsharded after a forward without backward:
        # reshard before reading them, so the shadow and the swaps always see the shards
        self._fsdp = _fsdp_modules(self.model)
        self._reshard()
        named = list(self.model.named_parameters())
        if not named:
            raise ValueError(
                f"{type(self.model).__name__} has no parameters: there is nothing to average"
            )
        # which of the model's (de-duplicated) parameters the shadow tracks, by position
        self._tracked = [p.requires_grad or not trainable_only for _, p in named]
        if not any(self._tracked):
            raise ValueError(
                f"{type(self.model).__name__} has no parameter with requires_grad=True, so "
                "trainable_only=True leaves nothing to average: unfreeze what you train "
                "before creating the EMA, or pass trainable_only=False"
            )
        self.warmup, self.every, self.trainable_only = bool(warmup), every, trainable_only
        self.step = 0
        self.num_updates = 0
        with torch.no_grad():
            self.shadow = {
                n: p.detach().to(dtype=_shadow_dtype(p), copy=True)
                for (n, p), keep in zip(named, self._tracked)
                if keep
            }
            self.shadow_buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        self._backup: list[torch.Tensor] | None = None
        self._groups: _Groups = []
        self._layout: list[tuple] = []
        self._modules = list(self.model.modules())

    def _reshard(self) -> None:
        for module in self._fsdp:
            module.reshard()

    def _live(self, check_tree: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Re-read on every call: model.to()/half() may replace Parameter objects and buffers.
        self._reshard()
        # Same order and de-duplication as named_parameters()/named_buffers(), without
        # walking the module tree again (that walk costs more than a small model's update).
        params: list[torch.Tensor] = []
        buffers: list[torch.Tensor] = []
        seen: set[int] = set()
        for module in self._modules:
            for out, tensors in ((params, module._parameters), (buffers, module._buffers)):
                for t in tensors.values():
                    if t is not None and id(t) not in seen:
                        seen.add(id(t))
                        out.append(t)
        changed = len(params) != len(self._tracked) or len(buffers) != len(self.shadow_buffers)
        if check_tree and not changed:  # a full walk also sees added or replaced submodules
            ids = [id(t) for t in (*self.model.parameters(), *self.model.buffers())]
            changed = ids != [id(t) for t in (*params, *buffers)]
        if changed:
            raise RuntimeError(
                f"the modules of {type(self.model).__name__} changed after the EMA was created "
                f"(it tracks {len(self.shadow)} parameters and {len(self.shadow_buffers)} "
                "buffers): create the EMA after changing the model"
            )
        return [p for p, keep in zip(params, self._tracked) if keep], buffers

    # ------------------------------------------------------------------ averaging
    @torch.no_grad()
    def update(self, step: int | None = None) -> bool:
        """Average the current weights in (call after ``optimizer.step()``).

        Args:
            step: the optimizer step just taken (1-based). ``None`` counts calls: pass it
                explicitly when some steps are skipped (fp16 overflow) or on resume.

        Returns:
            whether the shadow was updated (``False`` between ``every`` steps).
        """
        if self._backup is not None:
            raise RuntimeError(
                "EMA.update() while the averaged weights are applied: call restore() (or leave "
                "the averaged() block) first, otherwise the shadow would average itself"
            )
        self.step = self.step + 1 if step is None else int(step)
        if self.step % self.every:
            return False
        params, buffers = self._live()
        layout = [(id(p), p.device, p.dtype) for p in params]
        if layout != self._layout:  # first update, or the model was moved / cast since
            for (name, s), p in zip(self.shadow.items(), params):
                if s.device != p.device:
                    self.shadow[name] = s.to(p.device)
            shards = [_local(s) for s in self.shadow.values()]
            self._groups = _group(shards, [_local(p) for p in params])
            self._layout = layout
        _lerp_groups(self._groups, ema_decay(self.step, self.decay, self.warmup))
        if buffers:
            torch._foreach_copy_(list(self.shadow_buffers.values()), buffers)
        self.num_updates += 1
        return True

    def after_step(self, optimizer: torch.optim.Optimizer, state: State) -> None:
        self.update(step=state.step)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def apply_to(self) -> None:
        """Back up the model's weights and load the averaged ones (cast to the model's
        dtypes). Undo with :meth:`restore`."""
        if self._backup is not None:
            raise RuntimeError("the averaged weights are already applied; call restore() first")
        params, buffers = self._live(check_tree=True)
        live = [_local(p) for p in params] + buffers
        self._backup = [t.detach().clone() for t in live]
        averaged = [_local(s) for s in self.shadow.values()] + list(self.shadow_buffers.values())
        torch._foreach_copy_(live, averaged)

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights saved by :meth:`apply_to`, bit for bit."""
        if self._backup is None:
            raise RuntimeError("restore() without apply_to(): there is nothing to restore")
        backup, self._backup = self._backup, None
        params, buffers = self._live()
        torch._foreach_copy_([_local(p) for p in params] + buffers, backup)

    @contextlib.contextmanager
    def averaged(self) -> Iterator[nn.Module]:
        """Context manager: the model holds the averaged weights inside the block and its
        own weights again afterwards, also when an exception leaves the block."""
        self.apply_to()
        try:
            yield self.model
        finally:
            self.restore()

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The shadow (references, like ``nn.Module.state_dict``; only the averaged
        parameters, so adapter-sized for a LoRA model; ``DTensor`` shards under FSDP2, as
        ``torch.distributed.checkpoint`` expects) and the counters."""
        return {
            "shadow": dict(self.shadow),
            "buffers": dict(self.shadow_buffers),
            "step": self.step,
            "num_updates": self.num_updates,
        }

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, Any]:
        """:meth:`state_dict` with every FSDP2 shard gathered into a full CPU tensor, on
        rank 0; the other ranks get ``{}``. A collective when the model is sharded: every
        rank must call it (one tensor is gathered at a time). :meth:`load_state_dict` takes
        the result on any layout (sharded or not): to restore a sharded EMA, load the rank-0
        file on every rank and each takes its shard.

        Example:
            >>> sd = ema.full_state_dict()           # doctest: +SKIP
            >>> if sd: torch.save(sd, "ema.pt")      # rank 0 only
        """
        rank0, shadow = _rank() == 0, {}
        for name, s in self.shadow.items():
            full = s.full_tensor() if hasattr(s, "full_tensor") else s
            if rank0:
                shadow[name] = full.cpu()
        if not rank0:
            return {}
        buffers = {n: b.cpu() for n, b in self.shadow_buffers.items()}
        return {"shadow": shadow, "buffers": buffers, "step": self.step,
                "num_updates": self.num_updates}  # fmt: skip

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for key, mine in (("shadow", self.shadow), ("buffers", self.shadow_buffers)):
            theirs = state_dict[key]
            if theirs.keys() != mine.keys():
                missing, extra = (
                    sorted(mine.keys() - theirs.keys()),
                    sorted(theirs.keys() - mine.keys()),
                )
                raise ValueError(
                    f"EMA state_dict does not fit this model: {key} missing {missing}, "
                    f"unexpected {extra}"
                )
            for name, t in mine.items():
                if theirs[name].shape != t.shape:
                    raise ValueError(
                        f"EMA state_dict: {name} has shape {tuple(theirs[name].shape)}, "
                        f"the model has {tuple(t.shape)}"
                    )
                _load_tensor(t, theirs[name])
        self.step, self.num_updates = int(state_dict["step"]), int(state_dict["num_updates"])

    def __repr__(self) -> str:
        return (
            f"EMA(decay={self.decay}, warmup={self.warmup}, every={self.every}, "
            f"trainable_only={self.trainable_only})"
        )


def _load_tensor(mine: torch.Tensor, theirs: torch.Tensor) -> None:
    """``mine.copy_(theirs)``, also when ``mine`` is an FSDP2 shard and ``theirs`` a full
    tensor (from :meth:`EMA.full_state_dict`): this rank's shard of it is taken."""
    mesh = getattr(mine, "device_mesh", None)
    if mesh is not None and not hasattr(theirs, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        theirs = distribute_tensor(theirs.to(mine.device), mesh, mine.placements)
    mine.copy_(theirs)
