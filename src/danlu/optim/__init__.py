"""Optimisation tricks: clipping, schedules, EMA, SWA, model averaging, layer decay."""

from danlu.optim.clip import ClipGradNorm, ClipGradValue, GradNormMonitor, grad_norm
from danlu.optim.ema import EMA, ema_decay, ema_update_
from danlu.optim.fma import FMA, SoupResult, average_checkpoints, greedy_soup
from danlu.optim.layer_decay import find_layer_list, layer_decay_groups, lr_table
from danlu.optim.lookahead import lookahead
from danlu.optim.schedules import (
    Schedule,
    constant_warmup,
    cosine_warmup,
    linear_warmup,
    warmup_factor,
    warmup_schedule,
)
from danlu.optim.swa import SWA

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
    "EMA",
    "ema_decay",
    "ema_update_",
    "SWA",
    "FMA",
    "SoupResult",
    "average_checkpoints",
    "greedy_soup",
    "find_layer_list",
    "layer_decay_groups",
    "lr_table",
    "lookahead",
]
