"""Optimisation tricks: clipping, schedules, EMA, SWA, model averaging, layer decay."""

from danlu.optim.clip import ClipGradNorm, ClipGradValue, GradNormMonitor, grad_norm
from danlu.optim.schedules import (
    Schedule,
    constant_warmup,
    cosine_warmup,
    linear_warmup,
    warmup_factor,
    warmup_schedule,
)

__all__ = [
    "ClipGradNorm",
    "ClipGradValue",
    "GradNormMonitor",
    "grad_norm",
    "Schedule",
    "constant_warmup",
    "cosine_warmup",
    "linear_warmup",
    "warmup_factor",
    "warmup_schedule",
]
