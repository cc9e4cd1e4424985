"""Find the input embedding that adversarial tricks perturb and embedding mixup hooks, hook
its output (:func:`output_hook`), shared argument checks, and the checkpointed generator of
the embedding-noise tricks (:class:`GeneratorTrick`)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn

from danlu.core import Trick, unwrap_model

Target = str | nn.Parameter | nn.Module | None


def _candidates(model: nn.Module) -> list[tuple[str, nn.Embedding]]:
    seen: set[int] = set()
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Embedding) and id(mod.weight) not in seen:
            seen.add(id(mod.weight))
            out.append((name, mod))
    return out


def _listing(model: nn.Module) -> str:
    cands = _candidates(model)
    if not cands:
        return "the model has no nn.Embedding"
    return "candidates: " + ", ".join(f"{n!r} {tuple(m.weight.shape)}" for n, m in cands)


def _weight_of(module: nn.Module, what: str) -> nn.Parameter:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.dim() != 2:
        raise ValueError(
            f"target {what} has no 2-D .weight parameter to perturb; pass an nn.Embedding, "
            "its weight, or its name"
        )
    return weight


def find_embedding(model: nn.Module, target: Target = None) -> nn.Parameter:
    """The weight of the input embedding to perturb.

    ``target=None``: ``model.get_input_embeddings()`` when the (unwrapped) model has it
    (Hugging Face models), otherwise the single ``nn.Embedding`` with the most rows. A
    target can also be a parameter or module name (``"bert.embeddings.word_embeddings"``),
    an ``nn.Parameter`` or an ``nn.Module``. DDP and ``torch.compile`` wrappers are
    looked through.

    Raises:
        ValueError: when no embedding is found, when two embeddings are equally large, or
            when a named target does not exist; the message lists the candidates.

    Example:
        >>> emb = nn.Embedding(10, 4)
        >>> find_embedding(nn.Sequential(emb, nn.Linear(4, 2))) is emb.weight
        True
    """
    model = unwrap_model(model)
    if isinstance(target, nn.Parameter):
        if target.dim() != 2:
            raise ValueError(f"target parameter must be 2-D (rows x dim), got {tuple(target.shape)}")
        return target
    if isinstance(target, nn.Module):
        return _weight_of(target, type(target).__name__)
    if isinstance(target, str):
        params = dict(model.named_parameters())
        if target in params:
            if params[target].dim() != 2:
                raise ValueError(f"target {target!r} is not 2-D: {tuple(params[target].shape)}")
            return params[target]
        modules = dict(model.named_modules())
        if target in modules:
            return _weight_of(modules[target], repr(target))
        raise ValueError(f"target {target!r} is neither a parameter nor a module name; "
                         f"{_listing(model)}")
    if target is not None:
        raise TypeError(
            f"target must be None, a name, an nn.Parameter or an nn.Module, got "
            f"{type(target).__name__}"
        )
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            module = getter()
        except NotImplementedError:
            module = None
        if module is not None:
            return _weight_of(module, "get_input_embeddings()")
    cands = _candidates(model)
    if not cands:
        raise ValueError(
            "found no input embedding: the model has no get_input_embeddings() and no "
            "nn.Embedding; pass target= (a name, parameter or module)"
        )
    rows = sorted((m.num_embeddings for _, m in cands), reverse=True)
    if len(rows) > 1 and rows[0] == rows[1]:
        raise ValueError(
            f"two or more embeddings are equally large ({rows[0]} rows), so the input "
            f"embedding is ambiguous; pass target=<name>; {_listing(model)}"
        )
    return max(cands, key=lambda c: c[1].num_embeddings)[1].weight


def find_embedding_module(model: nn.Module, target: Target = None) -> nn.Module:
    """The module that owns :func:`find_embedding`'s weight (to hook its output)."""
    weight = find_embedding(model, target)
    if isinstance(target, nn.Module):
        return target
    owners = [m for m in unwrap_model(model).modules() if getattr(m, "weight", None) is weight]
    owners.sort(key=lambda m: not isinstance(m, nn.Embedding))  # tied weights: the embedding
    if owners:
        return owners[0]
    raise ValueError(
        "target is a parameter that no module of the model owns; pass the embedding module "
        "or its name instead"
    )


@contextlib.contextmanager
def output_hook(
    module: nn.Module, fn: Callable[[torch.Tensor, tuple], torch.Tensor | None]
) -> Iterator[nn.Module]:
    """Call ``fn(output, args)`` on every forward of ``module`` inside the block; a tensor it
    returns replaces the output. The hook is always removed on exit (also on an error).

    Perturbing the embedding *output* works on frozen, LoRA-wrapped or sharded embeddings
    and never writes the weight. Get the module with :func:`find_embedding_module`.

    Example:
        >>> emb = nn.Embedding(5, 2)
        >>> with output_hook(emb, lambda out, args: out * 0):
        ...     float(emb(torch.tensor([1])).detach().abs().sum())
        0.0
        >>> len(emb._forward_hooks)
        0
    """

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(
                f"the hooked module {type(mod).__name__} returned a {type(output).__name__}, "
                "not a tensor; pass target= the token embedding module"
            )
        return fn(output, args)

    handle = module.register_forward_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


def check_positive(name: str, value: float) -> float:
    """``value`` as a float, or a ValueError when it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        value > 0 and math.isfinite(value)
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


class GeneratorTrick(Trick):
    """A trick whose only state is its optional ``generator``: ``state_dict`` holds the
    generator's state (``{}`` without a generator)."""

    generator: torch.Generator | None

    def state_dict(self) -> dict:
        return {} if self.generator is None else {"generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.generator is not None and "generator" in state_dict:
            self.generator.set_state(state_dict["generator"])
        elif state_dict:
            super().load_state_dict(state_dict)
