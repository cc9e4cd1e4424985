"""Drop path / stochastic depth (Huang et al. 2016, https://arxiv.org/abs/1603.09382):
randomly drop a residual branch for whole examples, ``x + drop_path(branch(x), p)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["drop_path", "DropPath"]


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
