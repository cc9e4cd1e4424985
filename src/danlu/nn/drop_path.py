"""Drop path / stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382):
randomly drop a residual branch for whole examples, ``x + drop_path(branch(x), p)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["drop_path", "DropPath", "add_drop_path"]


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p < 1.0:
        raise ValueError(
            f"drop path probability p must be in [0, 1), got {p!r}; typical values are "
            "0.05-0.2 (often increased linearly with depth)"
        )
    return float(p)


def drop_path(
    x: torch.Tensor,
    p: float,
    training: bool = True,
    generator: torch.Generator | None = None,
    scale_by_keep: bool = True,
) -> torch.Tensor:
    """Zero whole examples (rows along dim 0) of ``x`` with probability ``p``.

    Args:
        x: output of a residual branch, batch on dim 0.
        p: drop probability in [0, 1).
        training: identity when ``False`` (eval), as for dropout.
        generator: optional ``torch.Generator`` (on ``x``'s device) for the mask.
        scale_by_keep: divide kept rows by ``1 - p`` so the expectation is unchanged.

    Example:
        >>> x = torch.ones(4, 3)
        >>> y = drop_path(x, 0.5, generator=torch.Generator().manual_seed(0))
        >>> sorted(set(y[:, 0].tolist()))   # every row is either dropped or scaled by 2
        [0.0, 2.0]
    """
    p = _check_p(p)
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep, generator=generator)
    if scale_by_keep:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """``nn.Module`` form of :func:`drop_path`; active only in ``train()`` mode.

    Example:
        >>> branch = nn.Sequential(nn.Linear(8, 8), DropPath(0.1))
        >>> out = torch.randn(4, 8) + branch(torch.randn(4, 8))
    """

    def __init__(self, p: float = 0.1, scale_by_keep: bool = True) -> None:
        super().__init__()
        self.p, self.scale_by_keep = _check_p(p), scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training, scale_by_keep=self.scale_by_keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _bert_layers(model: nn.Module) -> nn.ModuleList:
    for name, module in model.named_modules():
        layers = getattr(module, "layer", None)
        if (
            name.split(".")[-1] == "encoder"
            and isinstance(layers, nn.ModuleList)
            and all(
                hasattr(layer, "attention")
                and hasattr(layer.attention, "output")
                and hasattr(layer.attention.output, "dropout")
                and hasattr(layer, "output")
                and hasattr(layer.output, "dropout")
                for layer in layers
            )
        ):
            return layers
    raise ValueError(
        f"{type(model).__name__} has no BERT-style encoder (an `encoder.layer` list whose "
        "layers have `attention.output.dropout` and `output.dropout`); wrap your own "
        "residual branches with DropPath instead"
    )


def add_drop_path(model: nn.Module, p: float, linear: bool = True) -> list[float]:
    """Insert :class:`DropPath` into both residual branches (attention and feed-forward) of
    every layer of a BERT-style encoder (HF BERT, RoBERTa, ELECTRA, MiniLM, ...), right after
    the branch's dropout and before ``LayerNorm(branch + input)``.

    Args:
        model: the HF model (or any module holding an ``encoder.layer`` list of such layers).
        p: drop probability of the last layer, in [0, 1).
        linear: rates rise linearly from 0 (first layer) to ``p`` (last), the stochastic
            depth paper's rule; ``False`` uses ``p`` everywhere.

    Returns:
        the rate of each layer.

    Example:
        >>> from transformers import BertConfig, BertModel
        >>> bert = BertModel(BertConfig(hidden_size=32, num_attention_heads=2, intermediate_size=64))
        >>> [round(r, 3) for r in add_drop_path(bert, 0.11)]   # 12 layers
        [0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11]
    """
    p = _check_p(p)
    layers = _bert_layers(model)
    if any(isinstance(m, DropPath) for m in layers.modules()):
        raise ValueError("the encoder already has DropPath modules: add_drop_path was called twice")
    rates = [p * i / max(1, len(layers) - 1) if linear else p for i in range(len(layers))]
    for layer, rate in zip(layers, rates):
        for branch in (layer.attention.output, layer.output):
            branch.dropout = nn.Sequential(branch.dropout, DropPath(rate))
    return rates
