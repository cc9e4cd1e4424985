"""Mixup-family tricks from danlu.data (TinyTextClassifier, dict batches with labels)."""

from danlu.data.cutmix import TokenCutMix
from danlu.data.mixup import EmbeddingMixup, ManifoldMixup, SentenceMixup

FACTORIES = {
    "EmbeddingMixup": lambda model, opt: EmbeddingMixup(alpha=0.4, seed=1),
    "ManifoldMixup": lambda model, opt: ManifoldMixup("hidden", alpha=0.4, seed=2),
    "SentenceMixup": lambda model, opt: SentenceMixup("head", alpha=0.4, where="input", seed=3),
    "TokenCutMix": lambda model, opt: TokenCutMix(alpha=0.4, seed=4),
}
