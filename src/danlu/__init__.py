"""danlu (丹炉) — small, correct, fast PyTorch training tricks for NLP fine-tuning.

``import danlu`` needs only torch and numpy. Trick families live in subpackages:
``danlu.optim``, ``danlu.loss``, ``danlu.adversarial``, ``danlu.data``, ``danlu.nn``,
``danlu.predict`` (prediction time and ensembles), ``danlu.pretrain`` (domain-adaptive MLM,
Chinese whole-word masking);
integrations with optional dependencies in ``danlu.integrations``.
"""

from danlu.core import Order, State, Trick, Tricks, unwrap_model
from danlu.delayed import Delayed
from danlu.microbatch import MicroBatch, find_micro_batch

__version__ = "0.2.0"
__all__ = [
    "Order",
    "State",
    "Trick",
    "Tricks",
    "Delayed",
    "unwrap_model",
    "find_micro_batch",
    "MicroBatch",
    "__version__",
]
