"""Data tricks: EDA (``danlu.data.eda``), synonym sources (``danlu.data.synonyms``), the
mixup family (``danlu.data.mixup``) and long-text windowing (``danlu.data.longtext``).

Import the submodule you need; heavy dependencies (jieba, nltk, nlpaug) load lazily.
"""
