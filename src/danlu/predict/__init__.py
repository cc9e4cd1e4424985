"""Prediction time and ensembles: test-time augmentation, a length-sorted mixed-precision
predict helper, snapshot ensembles, blending / stacking of OOF predictions, F1 thresholds.

``import danlu.predict`` needs torch and numpy only; scipy and scikit-learn (extra ``lab``)
are imported by the blending functions that use them.
"""

from danlu.predict.blend import (
    StackResult,
    Thresholds,
    blend,
    fit_blend_weights,
    rank_average,
    stack,
    tune_thresholds,
)
from danlu.predict.inference import pad_collate, predict, sorted_batches
from danlu.predict.snapshot import SnapshotEnsemble, cycle_ends, ensemble_predict, snapshot_schedule
from danlu.predict.tta import TTA, TokenDropout, TTAReport, text_views, token_dropout, tta_predict

__all__ = [
    "TTA",
    "TTAReport",
    "TokenDropout",
    "text_views",
    "token_dropout",
    "tta_predict",
    "predict",
    "pad_collate",
    "sorted_batches",
    "SnapshotEnsemble",
    "cycle_ends",
    "snapshot_schedule",
    "ensemble_predict",
    "fit_blend_weights",
    "blend",
    "rank_average",
    "stack",
    "StackResult",
    "tune_thresholds",
    "Thresholds",
]
