"""Data tricks: EDA (``danlu.data.eda``), synonym sources (``danlu.data.synonyms``),
dataset expansion (``danlu.data.augment``), an nlpaug adapter (``danlu.data.nlpaug_adapter``),
the mixup family (``danlu.data.mixup``), token cutmix (``danlu.data.cutmix``), long-text
truncation and windows (``danlu.data.longtext``) and chunk pooling (``danlu.data.pooling``).

Import the submodule you need; heavy dependencies (jieba, nltk, nlpaug) load lazily.
"""
