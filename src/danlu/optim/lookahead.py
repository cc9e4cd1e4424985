"""Lookahead (Zhang et al. 2019, https://arxiv.org/abs/1907.08610), taken from
``pytorch_optimizer`` (extra ``optim``) rather than rewritten.

Every ``k`` steps of the base optimizer the slow weights move ``alpha`` of the way to the
fast weights, ``slow += alpha · (fast − slow)``, and the fast weights restart from them.
"""

from __future__ import annotations

import torch

from danlu._optional import require

__all__ = ["lookahead"]


def lookahead(base_optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5):
    """Wrap ``base_optimizer`` in ``pytorch_optimizer.Lookahead``.

    The result is a ``torch.optim.Optimizer``: use it (``step``, ``zero_grad``,
    ``state_dict``, schedulers, ``GradScaler``) in place of the base optimizer. Its
    ``state_dict`` holds the slow weights and the base optimizer's state.

    Args:
        base_optimizer: an optimizer instance, e.g. ``torch.optim.AdamW(params, lr=2e-5)``.
        k: base steps between synchronisations (>= 1); 5–10 in the paper.
        alpha: slow-weight step size in (0, 1]; 0.5 in the paper. 1 makes Lookahead a no-op.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = lookahead(torch.optim.AdamW(model.parameters(), lr=1e-3), k=5, alpha=0.5)
        >>> model(torch.randn(3, 4)).sum().backward(); opt.step(); opt.zero_grad()
    """
    if not isinstance(base_optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"base_optimizer must be a torch.optim.Optimizer instance, got "
            f"{type(base_optimizer).__name__}; e.g. lookahead(torch.optim.AdamW(params))"
        )
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (steps between syncs), got {k!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}; the paper uses 0.5")
    pytorch_optimizer = require("pytorch_optimizer", "optim", "Lookahead")
    return pytorch_optimizer.Lookahead(base_optimizer, k=k, alpha=float(alpha))
