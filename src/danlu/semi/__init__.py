"""Semi-supervised training: unlabelled batches in the loop, UDA and FixMatch consistency,
pseudo-labels (VAT and embedding noise live in :mod:`danlu.adversarial`).

Every trick is a plain function, a drop-in object and a :class:`danlu.Trick`.
"""

from danlu.semi.fixmatch import FixMatch, fixmatch_loss
from danlu.semi.pseudo import (
    PseudoLabel,
    PseudoLabels,
    PseudoRound,
    pseudo_dataset,
    pseudo_label_round,
    select_pseudo_labels,
)
from danlu.semi.uda import UDA, tsa_cross_entropy, tsa_threshold, uda_loss
from danlu.semi.unlabelled import (
    ConsistencyTrick,
    Unlabelled,
    UnlabelledStream,
    default_logits,
    text_views,
)

__all__ = [
    "Unlabelled",
    "UnlabelledStream",
    "text_views",
    "default_logits",
    "ConsistencyTrick",
    "UDA",
    "uda_loss",
    "tsa_threshold",
    "tsa_cross_entropy",
    "FixMatch",
    "fixmatch_loss",
    "select_pseudo_labels",
    "pseudo_dataset",
    "PseudoLabels",
    "PseudoLabel",
    "pseudo_label_round",
    "PseudoRound",
]
