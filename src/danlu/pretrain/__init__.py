"""Continued pretraining before fine-tuning: domain-adaptive MLM on the user's unlabelled
texts, with Chinese whole-word masking over jieba words (extras ``hf`` and ``zh``, imported
lazily)."""

from danlu.pretrain.mlm import MLMSummary, domain_adaptive_mlm, mlm_collator, mlm_features
from danlu.pretrain.wwm import segment_words

__all__ = ["MLMSummary", "domain_adaptive_mlm", "mlm_collator", "mlm_features", "segment_words"]
