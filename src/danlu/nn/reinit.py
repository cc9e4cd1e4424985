"""Re-initialise the top layers of a pretrained encoder before fine-tuning (Zhang et al.
2021, "Revisiting Few-sample BERT Fine-tuning", https://arxiv.org/abs/2006.05987): the
top blocks are the most pretraining-task specific; starting them fresh stabilises
fine-tuning on small data sets.

The layers are found as :func:`danlu.optim.layer_decay_groups` finds them
(:func:`danlu.optim.layer_decay.find_layer_list`); the "head" is everything registered
after the encoder that holds the layer list (BERT's pooler and classifier; DeBERTa's
relative-position embeddings and final LayerNorm, which live *inside* the encoder, are
left alone).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

from danlu.core import unwrap_model
from danlu.optim.layer_decay import find_layer_list

__all__ = ["reinit_top_layers"]


def _hf_model(model: nn.Module) -> nn.Module | None:
    """The outermost Hugging Face model inside ``model`` (a module with its own ``config``
    and a class-level ``_init_weights``; looking at the class skips wrappers such as peft's
    that forward attribute lookups)."""
    for module in model.modules():
        if "config" in vars(module) and callable(getattr(type(module), "_init_weights", None)):
            return module
    return None


def _reset(module: nn.Module) -> None:
    """torch's own init (``nn.MultiheadAttention`` names it ``_reset_parameters``)."""
    fn = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
    if callable(fn):
        fn()


def reinit_top_layers(
    model: nn.Module,
    n: int,
    *,
    head: bool = True,
    seed: int | None = None,
    init_fn: Callable[[nn.Module], None] | None = None,
) -> list[str]:
    """Re-initialise the top ``n`` blocks of an encoder (and its pooler/head) in place.

    Hugging Face models (without ``init_fn``): the chosen weights get exactly the values a
    freshly initialised model of the same class and config gets under
    ``torch.manual_seed(seed)``: the model's own init (normal(0, ``initializer_range``)
    weights, zero biases, LayerNorm 1/0), built once on the CPU (a second copy of the model
    in memory for a moment: about 2 s for BERT-base on 2 CPU cores). Re-drawing in place with
    ``model.apply(model._init_weights)`` is not enough: transformers 5 marks the weights
    loaded by ``from_pretrained`` as initialised (``_is_hf_initialized``) and its init
    functions then skip them, a silent no-op. Modules of the head outside the Hugging Face
    model (a user's own head), and every module of other models, get ``init_fn(module)``, by
    default each module's ``reset_parameters()`` (torch's default init). Weights tied to a
    parameter outside the chosen blocks (an MLM decoder tied to the input embedding) are
    left as they were.

    Args:
        model: the model (DDP-wrapped is fine).
        n: number of top blocks, ``0 <= n <= `` the number of blocks (0 with ``head=True``
            re-initialises the head only). Zhang et al. found 1–6 of BERT-large's 24 useful on
            small data; 1–2 for a 6–12 layer encoder is a safe start.
        head: also re-initialise what comes after the encoder (pooler, classifier).
        seed: seeds the draws (the global RNG state is saved and restored, so the rest of
            the run is not shifted); ``None`` draws from the global RNG.
        init_fn: ``init_fn(module)`` for each module, overriding the default.

    Returns:
        the names of the re-initialised parameters.

    Example:
        >>> from transformers import BertConfig, BertForSequenceClassification
        >>> model = BertForSequenceClassification(BertConfig(
        ...     vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        ...     intermediate_size=32))
        >>> names = reinit_top_layers(model, 2, seed=0)
        >>> sorted({name.split(".")[3] for name in names if ".layer." in name})
        ['2', '3']
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int (number of top layers), got {type(n).__name__}")
    if init_fn is not None and not callable(init_fn):
        raise TypeError(f"init_fn must be a callable module -> None, got {type(init_fn).__name__}")
    model = unwrap_model(model)
    found = find_layer_list(model)
    if found is None:
        raise ValueError(
            f"could not find the layer list of {type(model).__name__} (no nn.ModuleList of "
            "same-type blocks with parameters); reinit_top_layers needs an encoder with one"
        )
    prefix, layers = found
    if not 0 <= n <= len(layers):
        raise ValueError(
            f"n must be in [0, {len(layers)}] (the number of blocks in {prefix!r}), got {n}"
        )
    if n == 0 and not head:
        raise ValueError("n=0 with head=False re-initialises nothing; pass n >= 1 or head=True")
    modules = [m for block in list(layers)[len(layers) - n :] for m in block.modules()]
    if head:
        parent = prefix.rpartition(".")[0]
        named = list(model.named_modules())
        last = max(i for i, (nm, _) in enumerate(named) if nm.startswith(prefix + "."))
        modules += [
            m for nm, m in named[last + 1 :] if not parent or not nm.startswith(parent + ".")
        ]
    modules = list(dict.fromkeys(modules))  # each module once, in registration order
    # A parameter belongs to the first module registering it: weights tied in from outside
    # the chosen modules (an MLM decoder tied to the input embedding) are put back after.
    first_owner: dict[int, nn.Module] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            first_owner.setdefault(id(p), m)
    inside = {id(m) for m in modules}
    params = {id(p): p for m in modules for p in m.parameters(recurse=False)}
    chosen = {pid for pid in params if id(first_owner[pid]) in inside}
    keep = {pid: p.detach().clone() for pid, p in params.items() if pid not in chosen}

    hf = _hf_model(model) if init_fn is None else None
    hf_names = {id(p): nm for nm, p in hf.named_parameters()} if hf is not None else {}
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng, torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        if hf is not None:
            fresh = dict(type(hf)(hf.config).named_parameters())
            for pid in chosen & hf_names.keys():
                params[pid].copy_(fresh[hf_names[pid]])
        init = init_fn or _reset
        for m in modules:
            if not any(id(p) in hf_names for p in m.parameters(recurse=False)):
                init(m)
        for pid, value in keep.items():
            params[pid].copy_(value)
    return [nm for nm, p in model.named_parameters() if id(p) in chosen]
