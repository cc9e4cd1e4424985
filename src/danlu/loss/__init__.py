"""Loss tricks: focal loss, R-Drop, label smoothing, temperature-scaled cross-entropy.

Each exists as a function, a drop-in object where one makes sense, and a ``Trick``:
:class:`Focal`, :class:`LabelSmoothing` and :class:`TemperatureCE` swap the loss computed
from the logits that ``loss_fn`` returns; :class:`RDrop` wraps the whole loss chain; :class:`MultiTask` balances a dict of task losses.
"""

from danlu.loss.focal import Focal, FocalLoss, focal_loss
from danlu.loss.multitask import (
    MultiTask,
    MultiTaskLoss,
    dwa_weights,
    uncertainty_task_loss,
    weighted_task_loss,
)
from danlu.loss.rdrop import RDrop, duplicate_batch, rdrop_loss, symmetric_kl
from danlu.loss.smoothing import LabelSmoothing, TemperatureCE, temperature_cross_entropy

__all__ = [
    "focal_loss",
    "FocalLoss",
    "Focal",
    "rdrop_loss",
    "symmetric_kl",
    "duplicate_batch",
    "RDrop",
    "temperature_cross_entropy",
    "LabelSmoothing",
    "TemperatureCE",
    "weighted_task_loss",
    "uncertainty_task_loss",
    "dwa_weights",
    "MultiTaskLoss",
    "MultiTask",
]
