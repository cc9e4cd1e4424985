"""Every row of docs/errors.md: a bad input to a public entry point and the error it must raise.

Each expected message names the argument and the allowed range (or the expected shape), so a
user can fix the call from the message alone. The ids are the rows of the table in
docs/errors.md (``test_errors_doc_lists_every_row`` keeps the two in step).
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from danlu.data.augment import augment
from danlu.data.cutmix import token_cutmix
from danlu.data.eda import EDA, eda_params, random_deletion, random_swap, synonym_replacement
from danlu.data.longtext import chunk_documents, sliding_windows, truncate
from danlu.data.mixup import (
    mix_targets,
    mixup_batch,
    mixup_cross_entropy,
    sample_lambda,
    sample_permutation,
)
from danlu.data.pooling import AttentionPooling, LSTMPooling, pool_chunks
from danlu.data.synonyms import WordVectorSource
from danlu.datasets import TextDataset, char_vocab, encode_chars, load_rotten_tomatoes
from danlu.kfold import ensemble, stratified_folds
from danlu.label_issues import find_label_issues, issues_table
from danlu.loss.focal import focal_loss
from danlu.loss.rdrop import RDrop, rdrop_loss
from danlu.loss.smoothing import LabelSmoothing, temperature_cross_entropy
from danlu.nn.drop_path import DropPath, drop_path
from danlu.nn.reinit import reinit_top_layers
from danlu.optim.clip import ClipGradNorm, ClipGradValue, GradNormMonitor, grad_norm
from danlu.optim.lookahead import lookahead
from danlu.optim.schedules import warmup_factor, warmup_schedule

NAN = math.nan
RNG = random.Random(0)


def _opt():
    return torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)


L3, Y3 = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
IDS = torch.ones(2, 5, dtype=torch.long)

# (row id, call, exception type, pattern the message must contain)
ROWS = [
    # loss/
    ("rdrop_loss shapes differ", lambda: rdrop_loss(L3, torch.zeros(4, 2), Y3), ValueError,
     r"same shape, got \(4, 3\) and \(4, 2\)"),
    ("rdrop_loss alpha NaN", lambda: rdrop_loss(L3, L3, Y3, alpha=NAN), ValueError,
     r"alpha .* >= 0, got nan"),
    ("RDrop alpha -1", lambda: RDrop(alpha=-1), ValueError, r"alpha .* >= 0, got -1"),
    ("rdrop_loss 1-D logits", lambda: rdrop_loss(torch.zeros(3), torch.zeros(3), Y3[:1]), ValueError,
     r"logits must be \(B, C\) or \(B, T, C\) with the classes last, got \(3,\)"),
    ("rdrop_loss ignore_index True", lambda: rdrop_loss(L3, L3, Y3, ignore_index=True), TypeError,
     r"ignore_index must be an int .* got True"),
    ("focal_loss ignore_index True", lambda: focal_loss(L3, Y3, ignore_index=True), TypeError,
     r"ignore_index must be an int .* got True"),
    ("LabelSmoothing ignore_index True", lambda: LabelSmoothing(0.1, ignore_index=True), TypeError,
     r"ignore_index must be an int .* got True"),
    ("temperature_cross_entropy rows", lambda: temperature_cross_entropy(L3, Y3[:3], 2.0),
     ValueError, r"target must have one entry per row of logits \(4 rows\), got shape \(3,\)"),
    ("focal_loss gamma True", lambda: focal_loss(L3, Y3, gamma=True), ValueError,
     r"gamma must be a finite number >= 0"),
    ("focal_loss gamma NaN", lambda: focal_loss(L3, Y3, gamma=NAN), ValueError,
     r"gamma must be a finite number >= 0.*got nan"),
    ("focal_loss target shape", lambda: focal_loss(L3, Y3[:3], gamma=2), ValueError,
     r"class indices of shape \(4,\)"),
    ("focal_loss label_smoothing 2", lambda: focal_loss(L3, Y3, label_smoothing=2.0), ValueError,
     r"label_smoothing must be in \[0, 1\], got 2.0"),
    ("LabelSmoothing eps 1.5", lambda: LabelSmoothing(eps=1.5), ValueError,
     r"eps must be in \[0, 1\]"),
    ("temperature 0", lambda: temperature_cross_entropy(L3, Y3, temperature=0), ValueError,
     r"temperature must be a finite number > 0 .*got 0"),
    # data/
    ("mixup_cross_entropy lam 2", lambda: mixup_cross_entropy(L3, Y3, Y3, 2.0), ValueError,
     r"lam must be in \[0, 1\].*got 2.0"),
    ("mixup_cross_entropy lam NaN", lambda: mixup_cross_entropy(L3, Y3, Y3, NAN), ValueError,
     r"lam must be in \[0, 1\].*got nan"),
    ("mixup_cross_entropy lam tensor", lambda: mixup_cross_entropy(L3, Y3, Y3, torch.full((4,), 1.5)),
     ValueError, r"per-example lam must be a \(4,\) tensor with values in \[0, 1\]"),
    ("mixup_batch lam -0.1", lambda: mixup_batch(L3, Y3, 0.4, lam=-0.1), ValueError,
     r"lam must be in \[0, 1\]"),
    ("mixup_batch sizes", lambda: mixup_batch(L3, Y3[:3], 0.4), ValueError,
     r"same batch size in dim 0"),
    ("sample_lambda alpha 0", lambda: sample_lambda(0.0), ValueError, r"alpha must be a finite number > 0"),
    ("sample_lambda alpha True", lambda: sample_lambda(True), TypeError, r"alpha must be a number > 0"),
    ("token_cutmix lam 2", lambda: token_cutmix(IDS, None, 2.0, torch.tensor([1, 0])), ValueError, r"lam must be in \[0, 1\]"),
    ("truncate max_len True", lambda: truncate(list(range(10)), max_len=True), ValueError,
     r"max_len must be an integer > num_special"),
    ("sliding_windows stride 4", lambda: sliding_windows(list(range(10)), window=4, stride=4),
     ValueError, r"stride .* must be an integer in \[0, 4\)"),
    ("chunk_documents empty", lambda: chunk_documents([], window=4, stride=1), ValueError,
     r"docs must be a non-empty sequence of documents .* got empty"),
    ("chunk_documents padded batch", lambda: chunk_documents(IDS, window=4, stride=1), ValueError,
     r"docs must be a non-empty sequence .* got a tensor \(2, 5\)"),
    ("WordVectorSource top_k True", lambda: WordVectorSource("words.vector", top_k=True), ValueError,
     r"top_k must be an integer >= 1, got True"),
    ("WordVectorSource threshold NaN", lambda: WordVectorSource("words.vector", threshold=NAN),
     ValueError, r"threshold must be in \[-1, 1\] \(a real number\), got nan"),
    ("pool_chunks mode", lambda: pool_chunks(torch.zeros(2, 3), mode="median"), ValueError,
     r"mode must be 'mean', 'max' or 'sqrt_mean', got 'median'"),
    ("AttentionPooling dim 0", lambda: AttentionPooling(0), ValueError,
     r"dim must be an integer >= 1, got 0"),
    ("LSTMPooling hidden_size 0", lambda: LSTMPooling(4, hidden_size=0), ValueError,
     r"hidden_size must be an integer >= 1, got 0"),
    ("augment workers True", lambda: augment(["a b"], None, EDA(n_aug=1), workers=True),
     ValueError, r"workers must be an int >= 1, got True"),
    ("augment one str", lambda: augment("a b", None, EDA(n_aug=1)), TypeError,
     r"texts must be a sequence of str, got one str"),
    ("EDA alpha_sr 2", lambda: EDA(alpha_sr=2.0), ValueError, r"alpha_sr must be a number in \[0, 1\]"),
    ("EDA alpha_sr NaN", lambda: EDA(alpha_sr=NAN), ValueError, r"alpha_sr must be a number in \[0, 1\]"),
    ("EDA n_aug True", lambda: EDA(n_aug=True), ValueError, r"n_aug must be an int >= 1"),
    ("eda_params n_train 0", lambda: eda_params(0), ValueError, r"n_train must be an int >= 1"),
    ("sample_permutation n True", lambda: sample_permutation(True), ValueError,
     r"n must be an integer >= 1, got True; the batch size"),
    ("mixup_batch empty", lambda: mixup_batch(L3[:0], Y3[:0], 0.4), ValueError,
     r"x is an empty batch \(0 rows\)"),
    ("mixup_cross_entropy y_a rows", lambda: mixup_cross_entropy(L3, Y3[:3], Y3, 0.5), ValueError,
     r"y_a must give one label per row of logits \(4 rows\), got shape \(3,\)"),
    ("mix_targets num_classes 0", lambda: mix_targets(Y3, Y3, 0.5, 0), ValueError,
     r"num_classes must be an integer >= 1, got 0"),
    ("mix_targets class 5", lambda: mix_targets(Y3 + 3, Y3, 0.5, 3), ValueError,
     r"y_a must hold class indices in \[0, 2\] \(num_classes=3\), got values in \[3, 5\]"),
    ("mix_targets y_b shape", lambda: mix_targets(Y3, Y3[:2], 0.5, 3), ValueError,
     r"y_b must be a 1-D tensor of class indices shaped like y_a \(4,\)"),
    ("random_swap n -1", lambda: random_swap(["a", " ", "b"], -1, RNG), ValueError,
     r"n must be an integer >= 0, got -1"),
    ("synonym_replacement n True", lambda: synonym_replacement(["a"], True, {}.get, RNG), ValueError,
     r"n must be an integer >= 0, got True"),
    ("random_deletion p 2", lambda: random_deletion(["a", " ", "b"], 2.0, RNG), ValueError,
     r"p must be a number in \[0, 1\].*got 2.0"),
    ("random_deletion p NaN", lambda: random_deletion(["a", " ", "b"], NAN, RNG), ValueError,
     r"p must be a number in \[0, 1\].*got nan"),
    # optim/
    ("ClipGradNorm norm_type -2", lambda: ClipGradNorm(1.0, norm_type=-2), ValueError,
     r"norm_type must be in \[1, inf\].*got -2.*use 2.0"),
    ("ClipGradNorm max_norm NaN", lambda: ClipGradNorm(NAN), ValueError, r"max_norm must be in \(0, inf\)"),
    ("ClipGradNorm max_norm True", lambda: ClipGradNorm(True), ValueError, r"max_norm must be in \(0, inf\)"),
    ("ClipGradValue 0", lambda: ClipGradValue(0), ValueError, r"clip_value must be in \(0, inf\)"),
    ("GradNormMonitor keep 0", lambda: GradNormMonitor(keep=0), ValueError, r"keep must be an integer >= 1"),
    ("grad_norm norm_type 0", lambda: grad_norm([torch.ones(2)], norm_type=0), ValueError,
     r"norm_type must be in \[1, inf\]"),
    ("grad_norm one tensor", lambda: grad_norm(torch.ones(3)), TypeError,
     r"grads must be a list of tensors, got Tensor"),
    ("warmup_factor step -1", lambda: warmup_factor(-1, "linear", 2, 10), ValueError,
     r"step must be an integer >= 0, got -1"),
    ("warmup_factor step True", lambda: warmup_factor(True, "linear", 2, 10), ValueError,
     r"step must be an integer >= 0, got True"),
    ("warmup_factor kind", lambda: warmup_factor(3, "step", 2, 10), ValueError,
     r"kind must be 'linear', 'cosine' or 'constant', got 'step'"),
    ("warmup_schedule warmup_steps True",
     lambda: warmup_schedule(_opt(), "linear", warmup_steps=True, total_steps=10), ValueError,
     r"warmup_steps must be an integer >= 0, got True"),
    ("warmup_schedule total_steps 10.0",
     lambda: warmup_schedule(_opt(), "cosine", warmup_steps=1, total_steps=10.0), ValueError,
     r"total_steps must be an integer >= 1, got 10.0"),
    ("warmup_schedule warmup > total",
     lambda: warmup_schedule(_opt(), "linear", warmup_steps=20, total_steps=10), ValueError,
     r"warmup_steps \(20\) must not exceed total_steps \(10\)"),
    ("warmup_schedule min_factor NaN",
     lambda: warmup_schedule(_opt(), "linear", 1, 10, min_factor=NAN), ValueError,
     r"min_factor must be in \[0, 1\]"),
    ("warmup_schedule kind", lambda: warmup_schedule(_opt(), "step", 1, 10), ValueError,
     r"kind must be 'linear', 'cosine' or 'constant'"),
    ("lookahead k True", lambda: lookahead(_opt(), k=True), ValueError, r"k must be an integer >= 1"),
    ("lookahead alpha 0", lambda: lookahead(_opt(), alpha=0.0), ValueError, r"alpha must be in \(0, 1\]"),
    # nn/
    ("drop_path p 1", lambda: drop_path(torch.ones(2, 3), p=1.0), ValueError, r"p must be in \[0, 1\)"),
    ("DropPath p True", lambda: DropPath(p=True), ValueError, r"p must be in \[0, 1\)"),
    ("DropPath p NaN", lambda: DropPath(p=NAN), ValueError, r"p must be in \[0, 1\)"),
    ("reinit_top_layers n True", lambda: reinit_top_layers(nn.Linear(2, 2), n=True), TypeError,
     r"n must be an int \(number of top layers\), got bool"),
    # kfold, label issues, datasets
    ("stratified_folds n_splits 1", lambda: stratified_folds([0, 1] * 5, n_splits=1), ValueError,
     r"n_splits must be an integer in \[2, 10\]"),
    ("stratified_folds n_splits True", lambda: stratified_folds([0, 1] * 5, n_splits=True),
     ValueError, r"n_splits must be an integer in \[2, 10\]"),
    ("stratified_folds empty", lambda: stratified_folds([]), ValueError, r"labels must be a non-empty"),
    ("ensemble 2-D", lambda: ensemble(np.zeros((4, 3))), ValueError,
     r"shape \(n_folds, n_examples, n_classes\), got \(4, 3\)"),
    ("ensemble NaN", lambda: ensemble(np.full((2, 4, 3), NAN)), ValueError, r"fold_outputs .* finite"),
    ("ensemble method", lambda: ensemble(np.zeros((2, 4, 3)), "vote"), ValueError,
     r"method must be 'mean_logits', 'mean_probs' or 'rank'"),
    ("find_label_issues label 3", lambda: find_label_issues([0, 3], np.full((2, 2), 0.5)),
     ValueError, r"labels must be integers in \[0, 1\]"),
    ("find_label_issues empty", lambda: find_label_issues([], np.zeros((0, 2))), ValueError,
     r"empty \(0 examples\)"),
    ("find_label_issues NaN probs", lambda: find_label_issues([0, 1], np.full((2, 2), NAN)),
     ValueError, r"pred_probs must be probabilities"),
    ("stratified_folds seed True", lambda: stratified_folds([0, 1] * 5, 2, seed=True), ValueError,
     r"seed must be an integer in \[0, 4294967295\], got True"),
    ("issues_table texts short",
     lambda: issues_table(find_label_issues([0, 1], np.full((2, 2), 0.5), backend="self_confidence"),
                          ["a"]),
     ValueError, r"texts has 1 entries but an issue points at index 1"),
    ("LabelIssues.top k True",
     lambda: find_label_issues([0, 1], np.full((2, 2), 0.5), backend="self_confidence").top(True),
     ValueError, r"k must be an integer >= 0, got True"),
    ("TextDataset lengths", lambda: TextDataset(["a", "b"], [0], ("neg", "pos")), ValueError,
     r"same length .* got 2 texts and 1 labels"),
    ("TextDataset one str", lambda: TextDataset("ab", [0, 1], ("neg", "pos")), TypeError,
     r"texts must be a sequence of str, got one str"),
    ("load_rotten_tomatoes limit 0", lambda: load_rotten_tomatoes(limit=0), ValueError,
     r"limit must be an integer >= 1, got 0"),
    ("char_vocab one str", lambda: char_vocab("abc"), TypeError,
     r"texts must be a sequence of str, got one str: wrap it in a list"),
    ("char_vocab min_freq 0", lambda: char_vocab(["ab"], min_freq=0), ValueError,
     r"min_freq must be an integer >= 1"),
    ("encode_chars max_len 0", lambda: encode_chars(["ab"], {"a": 2}, max_len=0), ValueError,
     r"max_len must be an integer >= 1"),
]


DOC = (Path(__file__).resolve().parent.parent / "docs" / "errors.md").read_text("utf-8")
DOC_ROWS = dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", DOC, flags=re.M))


@pytest.mark.parametrize(("row", "call", "exc", "pattern"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_is_refused_with_a_clear_message(row, call, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        call()
    # the table in docs/errors.md shows the message raised today, word for word
    shown = f"{exc.__name__}: {info.value}".replace("|", "\\|").replace("\n", " ")
    assert DOC_ROWS.get(row) == shown


def test_errors_doc_lists_every_row():
    assert set(DOC_ROWS) == {r[0] for r in ROWS}
