"""Domain-adaptive MLM: a few epochs of continued masked-language-model pretraining of an
HF encoder on the task's own unlabelled texts before fine-tuning (Gururangan et al. 2020,
"Don't Stop Pretraining", https://arxiv.org/abs/2004.10964).

Masking is transformers' ``DataCollatorForLanguageModeling`` (token-level, or whole-word
with :func:`danlu.pretrain.segment_words` for Chinese); the loop is a plain AdamW loop through
:class:`danlu.Tricks` with a warmup/linear-decay schedule. The checkpoint it saves is loaded
by ``AutoModelForSequenceClassification.from_pretrained(output_dir)`` (the MLM head is
dropped, the classifier starts fresh).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from danlu._optional import require
from danlu.core import Tricks
from danlu.optim.layer_decay import layer_decay_groups
from danlu.optim.schedules import warmup_schedule
from danlu.pretrain.wwm import segment_words

__all__ = ["MLMSummary", "mlm_features", "mlm_collator", "domain_adaptive_mlm"]

#: More epochs than this draw a warning: long continued pretraining on a small corpus
#: overwrites what the general pretraining learned.
MAX_QUIET_EPOCHS = 3


@dataclass
class MLMSummary:
    """What :func:`domain_adaptive_mlm` did: the checkpoint directory, optimizer steps and
    the mean MLM loss of each epoch."""

    output_dir: str
    steps: int
    epoch_losses: list[float] = field(default_factory=list)


def mlm_features(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    whole_word: bool = False,
    cut: Callable[[str], list[str]] | None = None,
) -> list[dict[str, list[int]]]:
    """Tokenised examples for :func:`mlm_collator`, one dict per text (unpadded).

    Args:
        tokenizer: an HF tokenizer (fast for ``whole_word=True``).
        texts: the unlabelled texts.
        max_length: truncation length in tokens.
        whole_word: segment Chinese with ``cut`` (default jieba) first and keep the offset
            mappings the whole-word collator groups by.
        cut: ``cut(text) -> words`` for ``whole_word``.

    Example:
        >>> features = mlm_features(tokenizer, ["我喜欢自然语言处理"], whole_word=True)  # doctest: +SKIP
    """
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings (a list, not one str)")
    if whole_word:
        texts = segment_words(texts, cut)
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
        return_offsets_mapping=whole_word,
    )
    return [{k: enc[k][i] for k in enc} for i in range(len(texts))]


def mlm_collator(
    tokenizer: Any,
    mlm_probability: float = 0.15,
    *,
    whole_word: bool = False,
    seed: int | None = None,
) -> Any:
    """transformers' ``DataCollatorForLanguageModeling``: pads, picks tokens with
    probability ``mlm_probability`` and replaces them 80% ``[MASK]`` / 10% random / 10%
    kept; ``labels`` is -100 elsewhere. With ``whole_word=True`` it picks words (tokens
    with contiguous character offsets) and replaces all their tokens by ``[MASK]``
    (transformers supports no random replacement there).

    Example:
        >>> batch = mlm_collator(tokenizer, whole_word=True, seed=0)(features)  # doctest: +SKIP
    """
    require("transformers", "hf", "masked-language-model pretraining")
    from transformers import DataCollatorForLanguageModeling

    if whole_word and not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"whole-word masking needs a fast tokenizer (offset mappings), got "
            f"{type(tokenizer).__name__}; load it with AutoTokenizer.from_pretrained(path)"
        )
    ok = not isinstance(mlm_probability, bool) and isinstance(mlm_probability, float | int)
    if not (ok and 0 < mlm_probability < 1):
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability!r} (BERT: 0.15)")
    if not whole_word:
        return DataCollatorForLanguageModeling(
            tokenizer, mlm_probability=float(mlm_probability), seed=seed
        )
    # transformers masks whole words with [MASK] only (it warns and sets this itself)
    collate = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=float(mlm_probability),
        whole_word_mask=True,
        mask_replace_prob=1.0,
        random_replace_prob=0.0,
        seed=seed,
    )
    return _PadOffsets(collate, tokenizer.padding_side)


class _PadOffsets:
    """``tokenizer.pad`` does not pad ``offset_mapping``: pad it with (0, 0) (padding is a
    special token, never masked) so features of different lengths batch."""

    def __init__(self, collate: Any, side: str) -> None:
        self.collate, self.side = collate, side

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        width = max(len(f["input_ids"]) for f in features)
        padded = []
        for f in features:
            fill = [(0, 0)] * (width - len(f["offset_mapping"]))
            offsets = list(f["offset_mapping"])
            offsets = fill + offsets if self.side == "left" else offsets + fill
            padded.append({**f, "offset_mapping": offsets})
        return self.collate(padded)


def _mlm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def domain_adaptive_mlm(
    model: nn.Module | str,
    tokenizer: Any,
    texts: Sequence[str],
    output_dir: str | os.PathLike[str],
    *,
    epochs: int = 2,
    lr: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 128,
    mlm_probability: float = 0.15,
    whole_word: bool = False,
    seed: int = 0,
    tricks: Tricks | None = None,
) -> MLMSummary:
    """Continue MLM pretraining on ``texts`` for a few epochs and save the checkpoint.

    Args:
        model: a masked-LM model (``AutoModelForMaskedLM``) or a path to load one from
            (a checkpoint without MLM head weights, such as a sentence-transformers one,
            gets a freshly initialised head).
        tokenizer: its HF tokenizer (or a path); saved beside the weights.
        texts: unlabelled in-domain texts (the task's train + test texts without labels,
            plus any unlabelled pool).
        output_dir: where ``save_pretrained`` writes model and tokenizer.
        epochs: 1–3 is the usual range (more draws a warning: too many epochs on a small
            corpus erase what pretraining learned).
        lr: peak AdamW lr (> 0), warmed up over the first 6% of the steps, then linear decay;
            5e-5 (BERT-base) to 1e-4.
        batch_size: texts per batch (use ``Tricks(accumulate=k)`` for larger effective ones).
        max_length: truncation length in tokens.
        mlm_probability: share of tokens (words with ``whole_word``) masked, in (0, 1).
        whole_word: Chinese whole-word masking over jieba words (extra ``zh``).
        seed: seeds the shuffling and the masks (the model's dropout uses the global RNG).
        tricks: a :class:`danlu.Tricks` to train with (accumulation, AMP, clipping ...).

    Returns:
        an :class:`MLMSummary`.

    Example:
        >>> summary = domain_adaptive_mlm(path, path, texts, "out/dapt", epochs=2)  # doctest: +SKIP
        >>> clf = AutoModelForSequenceClassification.from_pretrained("out/dapt", num_labels=2)  # doctest: +SKIP
    """
    require("transformers", "hf", "masked-language-model pretraining")
    import transformers

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if epochs > MAX_QUIET_EPOCHS:
        warnings.warn(
            f"epochs={epochs}: domain-adaptive MLM usually runs 1-{MAX_QUIET_EPOCHS} epochs; "
            "many more on a small corpus overwrite what the general pretraining learned",
            UserWarning,
            stacklevel=2,
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    tricks = tricks if tricks is not None else Tricks()
    if not isinstance(tricks, Tricks):
        raise TypeError(f"tricks must be a danlu.Tricks or None, got {type(tricks).__name__}")
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer)
    if isinstance(model, str | os.PathLike):
        model = transformers.AutoModelForMaskedLM.from_pretrained(model)
    collate = mlm_collator(tokenizer, mlm_probability, whole_word=whole_word, seed=seed)
    features = mlm_features(tokenizer, texts, max_length=max_length, whole_word=whole_word)
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=lambda rows: dict(collate(rows)),
        generator=torch.Generator().manual_seed(seed),
    )
    # one lr for all (depth 0), no weight decay on biases and norms
    groups = layer_decay_groups(model, lr, 1.0, weight_decay=0.01, depth_fn=lambda name: 0)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    per_epoch = math.ceil(len(loader) / tricks.accumulate)
    schedule = warmup_schedule(
        optimizer, "linear", round(0.06 * epochs * per_epoch), epochs * per_epoch
    )

    was_training = model.training
    model.train()
    steps, epoch_losses = 0, []
    try:
        for _ in range(epochs):
            losses = []
            for i, batch in enumerate(loader):
                boundary = (i + 1) % tricks.accumulate == 0 or i == len(loader) - 1
                state = tricks.step(model, optimizer, batch, _mlm_loss, boundary=boundary)
                losses.append(float(state.loss))
                if state.stepped:
                    steps += 1
                    schedule.step()
            tricks.epoch_end()
            epoch_losses.append(sum(losses) / len(losses))
    finally:
        model.train(was_training)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return MLMSummary(os.fspath(output_dir), steps, epoch_losses)
