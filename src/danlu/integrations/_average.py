"""Swap averaged weights (danlu EMA or SWA) into a model for evaluation or saving."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

__all__ = ["averaged_weights", "check_average"]


def check_average(average: Any) -> None:
    """TypeError unless ``average`` is usable by :func:`averaged_weights` (or None)."""
    if average is not None and not callable(getattr(average, "averaged", None)):
        raise TypeError(
            "average must be a danlu EMA (an averaged() context manager) or SWA (an "
            f"AveragedModel in .averaged), got {type(average).__name__}"
        )


@contextlib.contextmanager
def averaged_weights(average: Any, model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: ``model`` holds the weights averaged by ``average`` inside the block
    and its own weights (bit for bit) afterwards, also when an exception leaves the block.

    ``average`` is a danlu ``EMA`` (its ``averaged()`` context is used) or ``SWA`` (the
    parameters and buffers of its ``AveragedModel`` are copied in; before the first average
    the model keeps its own weights).

    Example:
        >>> with averaged_weights(swa, model):
        ...     metrics = trainer.evaluate()
    """
    averaged = average.averaged
    if not isinstance(averaged, nn.Module):
        with averaged():
            yield model
        return
    if int(getattr(averaged, "n_averaged", 1)) == 0:
        yield model
        return
    source = getattr(averaged, "module", averaged)
    live = list(model.parameters()) + list(model.buffers())
    mean = list(source.parameters()) + list(source.buffers())
    if [t.shape for t in live] != [t.shape for t in mean]:
        raise ValueError("the averaged model does not match the model: was it built from it?")
    with torch.no_grad():
        backup = [t.detach().clone() for t in live]
        try:
            for t, m in zip(live, mean):
                t.copy_(m)
            yield model
        finally:
            for t, b in zip(live, backup):
                t.copy_(b)
