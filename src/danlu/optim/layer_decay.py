"""Layer-wise learning-rate decay (LLRD): lower layers of a pretrained encoder get smaller
learning rates (ERNIE / ELECTRA / BEiT recipe; Clark et al. 2020, https://arxiv.org/abs/2003.10555).

A parameter at depth ``d`` gets ``lr · decay^(n + 1 − d)``: embeddings ``d = 0``, layer ``i``
(0-based) ``d = i + 1``, head and pooler ``d = n + 1``. Depth is discovered from the module
structure: the layer list is the ``nn.ModuleList`` of same-type blocks holding the most
parameters; parameters registered before it are embeddings, after it head.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from danlu.core import unwrap_model

__all__ = ["layer_decay_groups", "find_layer_list", "lr_table"]

_NORMS: tuple[type, ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm/RMSNorm/BatchNorm-like by type: torch's classes, or a class whose name
    ends in "Norm" (``T5LayerNorm``, ``LlamaRMSNorm``, ``DebertaLayerNorm``)."""
    return isinstance(module, _NORMS) or type(module).__name__.lower().endswith("norm")


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The encoder's list of repeated blocks: among the ``nn.ModuleList`` s whose children
    all have one type, the one holding the most parameters (the outermost on a tie, e.g.
    ALBERT's ``albert_layer_groups``). ``None`` when there is none.

    Example:
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2), num_layers=2)
        >>> find_layer_list(enc)[0]
        'layers'
    """
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    return best


def _auto_depths(model: nn.Module, names: list[str]) -> tuple[dict[str, int], int]:
    found = find_layer_list(model)
    if found is None:
        raise ValueError(
            f"could not find the layer list of {type(model).__name__} (no nn.ModuleList of "
            "same-type blocks with parameters), so none of its parameters has a depth: "
            f"{names}. Pass depth_fn(name) -> int (0 = embeddings, i + 1 = layer i, "
            "n + 1 = head)"
        )
    prefix, layers = found
    prefix = f"{prefix}." if prefix else ""
    n = len(layers)
    block_of = {}
    for i, block in enumerate(layers):
        for p in block.parameters():
            block_of.setdefault(id(p), i)
    all_named = dict(model.named_parameters())  # registration order, shared weights once
    order = {name: k for k, name in enumerate(all_named)}
    inside = [order[nm] for nm, p in all_named.items() if id(p) in block_of]
    first = min(inside)
    embedding = getattr(model, "get_input_embeddings", lambda: None)()
    emb_ids = {id(p) for p in embedding.parameters()} if isinstance(embedding, nn.Module) else set()
    depths = {}
    for name in names:
        p = all_named[name]
        if id(p) in block_of:
            depths[name] = block_of[id(p)] + 1
        elif id(p) in emb_ids or order[name] < first:
            depths[name] = 0
        else:
            depths[name] = n + 1
    return depths, n + 1


def _check_number(name: str, value: Any, low: float, high: float | None, closed_low: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    ok = ok and (value >= low if closed_low else value > low) and (high is None or value <= high)
    if not ok:
        bracket = "[" if closed_low else "("
        upper = f"{high}]" if high is not None else "inf)"
        raise ValueError(f"{name} must be in {bracket}{low}, {upper}, got {value!r}")
    return float(value)


def layer_decay_groups(
    model: nn.Module,
    lr: float,
    decay: float,
    weight_decay: float = 0.01,
    depth_fn: Callable[[str], int | None] | None = None,
    head_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Optimizer param groups with layer-wise lr decay and no weight decay on biases and
    normalisation weights.

    Each group holds ``params``, ``param_names``, ``lr = lr · lr_scale``,
    ``lr_scale = decay^(top − depth)`` (timm's convention, read by schedulers that honour
    it), ``weight_decay`` and ``depth``. Only parameters with ``requires_grad`` are included;
    every one is in exactly one group. Warmup schedules from :mod:`danlu.optim.schedules`
    multiply each group's own lr, so the ratios hold during training.

    Depth discovery (without ``depth_fn``): the layer list is found by :func:`find_layer_list`
    (``encoder.layer`` for BERT, RoBERTa, DeBERTa-v2, ERNIE, ELECTRA, MiniLM); block ``i``
    gets depth ``i + 1``; parameters registered before the list, and the input embedding,
    get 0 (embeddings, ELECTRA's ``embeddings_project``, ALBERT's
    ``embedding_hidden_mapping_in``); parameters registered after it get ``n + 1`` (pooler,
    classifier, DeBERTa's relative-position embeddings and their LayerNorm). ALBERT shares
    one block across all its layers: ``n`` counts the *distinct* blocks (1 for
    ``albert-base``), so the shared block has depth 1 with ``lr · decay`` between the
    embeddings (``lr · decay²``) and the head (``lr``).

    Args:
        model: the model (DDP-wrapped is fine; names are those of the inner module).
        lr: the head's learning rate (> 0), e.g. 2e-5–5e-5 for BERT-base fine-tuning.
        decay: in (0, 1]; 0.8–0.95 is common (0.9 for 12 layers, 0.8–0.85 for 24); 1 turns
            the decay off.
        weight_decay: for weight matrices (>= 0); biases and norm weights get 0.
        depth_fn: ``depth_fn(name) -> int`` for models the discovery does not fit; ``None``
            for a parameter is an error. The deepest depth returned gets ``lr``.
        head_lr_scale: > 0, multiplies the lr of the deepest depth (pooler and classifier:
            the head, freshly initialised when fine-tuning starts), e.g. 10–100 for a head at
            ``lr · 10`` while the encoder stays at ``lr``, as competition recipes do. Give
            the pooler its own depth with ``depth_fn`` to keep it out of this.

    Example:
        >>> enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2), num_layers=2)
        >>> model = nn.Sequential(nn.Embedding(10, 8), enc, nn.Linear(8, 2))
        >>> groups = layer_decay_groups(model, lr=1e-3, decay=0.5)
        >>> sorted({g["lr"] for g in groups})
        [0.000125, 0.00025, 0.0005, 0.001]
        >>> opt = torch.optim.AdamW(groups)   # doctest: +SKIP
    """
    lr = _check_number("lr", lr, 0.0, None, closed_low=False)
    decay = _check_number("decay", decay, 0.0, 1.0, closed_low=False)
    weight_decay = _check_number("weight_decay", weight_decay, 0.0, None, closed_low=True)
    head_lr_scale = _check_number("head_lr_scale", head_lr_scale, 0.0, None, closed_low=False)
    if depth_fn is not None and not callable(depth_fn):
        raise TypeError(f"depth_fn must be a callable name -> int, got {type(depth_fn).__name__}")
    model = unwrap_model(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(
            f"{type(model).__name__} has no parameters with requires_grad=True: nothing to train"
        )
    names = [n for n, _ in named]
    if depth_fn is None:
        depths, top = _auto_depths(model, names)
    else:
        depths = {n: depth_fn(n) for n in names}
        unassigned = [n for n, d in depths.items() if d is None]
        if unassigned:
            raise ValueError(
                f"depth_fn returned None for {len(unassigned)} parameters: {unassigned}"
            )
        bad = {
            n: d
            for n, d in depths.items()
            if isinstance(d, bool) or not isinstance(d, int) or d < 0
        }
        if bad:
            raise ValueError(f"depth_fn must return integers >= 0, got {bad}")
        top = max(depths.values())

    no_decay = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in named:
        decayed = weight_decay > 0 and not (name.endswith("bias") or id(p) in no_decay)
        depth = depths[name]
        if (depth, decayed) not in groups:
            scale = decay ** (top - depth) * (head_lr_scale if depth == top else 1.0)
            groups[(depth, decayed)] = {
                "params": [],
                "param_names": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decayed else 0.0,
                "depth": depth,
            }
        groups[(depth, decayed)]["params"].append(p)
        groups[(depth, decayed)]["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], not k[1]))]


def lr_table(groups: list[dict[str, Any]]) -> str:
    """A plain-text table of param groups: depth, lr, lr_scale, weight decay, parameter
    count and the first and last parameter name.

    Example:
        >>> print(lr_table(layer_decay_groups(model, lr=1e-3, decay=0.5)))   # doctest: +SKIP
    """
    rows = [("depth", "lr", "lr_scale", "wd", "params", "names")]
    for g in groups:
        names = g.get("param_names") or []
        span = names[0] if len(names) <= 1 else f"{names[0]} … {names[-1]} ({len(names)})"
        rows.append(
            (
                str(g.get("depth", "")),
                f"{g['lr']:.3e}",
                f"{g.get('lr_scale', 1.0):.4f}",
                f"{g.get('weight_decay', 0.0):g}",
                f"{sum(p.numel() for p in g['params']):,}",
                span,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    return "\n".join(lines)
