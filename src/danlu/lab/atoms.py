"""Combo atoms: the named tricks the lab can stack (``fgm+ema``), each a small recipe with
fixed, documented defaults.

An :class:`Atom` contributes any of: a :class:`danlu.Trick` built for the run
(``make_trick``), an augmentation of the training texts (``augment``; such atoms take more
optimizer steps, so the lab adds a step-matched base), optimizer param groups
(``param_groups``), or averaged weights to evaluate with (``eval_weights``).

Example:
    >>> [a.name for a in parse_combo("fgm+ema")]
    ['fgm', 'ema']
    >>> canonical_combo("ema+fgm")
    'fgm+ema'
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from danlu.core import Trick
from danlu.datasets import TextDataset
from danlu.lab.task import Task

__all__ = ["Atom", "RunContext", "ATOMS", "parse_combo", "canonical_combo", "step_key"]


@dataclass
class RunContext:
    """What an atom sees when it builds its trick: the run's model, optimizer and sizes,
    the task's encoder (``encode(texts) -> inputs dict``) and batch size, and the run's
    unlabelled texts (``Task.unlabelled``; None when the task has none), from which a
    semi-supervised atom can cycle batches: ``ctx.encode(ctx.unlabelled.texts[i:j])``."""

    task: Task
    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    seed: int
    n_train: int
    epochs: int
    steps_per_epoch: int
    encode: Callable[[list[str]], dict[str, torch.Tensor]] | None = None
    batch_size: int = 32
    unlabelled: TextDataset | None = None


@dataclass(frozen=True)
class Atom:
    """One stackable trick of the lab.

    Args:
        name: the combo token (``fgm``).
        help: one line for ``danlu lab tricks``.
        family: at most one atom per family in a stack (``adversarial``, ``loss``,
            ``weights``, ``data``, ``optim``, ``regulariser``); ``regulariser`` atoms stack
            freely.
        make_trick: ``make_trick(ctx) -> Trick``.
        augment: ``augment(train, task, seed) -> train`` (more examples → more steps).
        param_groups: ``param_groups(model, task) -> groups`` for AdamW.
        eval_weights: ``eval_weights(trick, model)``: a context manager yielding the module
            to evaluate (averaged weights).
        predict: ``predict(ctx, model, texts) -> probabilities (n, C)``: replaces the plain
            evaluation on dev and test (test-time augmentation); its cost shows in the
            record's ``eval_s``. At most one atom of a stack may have it.
        prepare_model: ``prepare_model(ctx)``: called once after the model and optimizer are
            built, before any trick is made and before training (e.g. re-initialise the top
            layers).
    """

    name: str
    help: str
    family: str
    make_trick: Callable[[RunContext], Trick] | None = None
    augment: Callable[[TextDataset, Task, int], TextDataset] | None = None
    param_groups: Callable[[nn.Module, Task], list[dict[str, Any]]] | None = None
    eval_weights: Callable[[Trick, nn.Module], contextlib.AbstractContextManager] | None = None
    predict: Callable[[RunContext, nn.Module, list[str]], torch.Tensor] | None = None
    prepare_model: Callable[[RunContext], None] | None = None


def _fgm(ctx: RunContext) -> Trick:
    from danlu.adversarial import FGM

    return FGM(ctx.model, eps=1.0)


def _pgd(ctx: RunContext) -> Trick:
    from danlu.adversarial import PGD

    return PGD(ctx.model, eps=1.0, alpha=0.3, steps=3)


def _freelb(ctx: RunContext) -> Trick:
    from danlu.adversarial import FreeLB

    generator = torch.Generator().manual_seed(ctx.seed)
    return FreeLB(ctx.model, steps=3, alpha=0.1, init_mag=0.1, generator=generator)


def _awp(ctx: RunContext) -> Trick:
    from danlu.adversarial import AWP

    return AWP(ctx.model, adv_lr=1.0, adv_eps=0.01, start_step=ctx.steps_per_epoch)


def _rdrop(ctx: RunContext) -> Trick:
    from danlu.loss import RDrop

    return RDrop(alpha=1.0)


def _ema(ctx: RunContext) -> Trick:
    from danlu.optim import EMA

    return EMA(ctx.model, decay=0.99, warmup=True)


def _ema_weights(trick: Trick, model: nn.Module) -> contextlib.AbstractContextManager:
    return trick.averaged()  # type: ignore[attr-defined]


def _swa(ctx: RunContext) -> Trick:
    from danlu.optim import SWA

    return SWA(ctx.model, start_epoch=max(1, math.ceil(0.75 * ctx.epochs)))


@contextlib.contextmanager
def _swa_weights(trick: Trick, model: nn.Module) -> Iterator[nn.Module]:
    averaged = trick.averaged  # type: ignore[attr-defined]
    yield averaged.module if int(averaged.n_averaged) > 0 else model


def _mixup(ctx: RunContext) -> Trick:
    from danlu.data.mixup import EmbeddingMixup

    return EmbeddingMixup(alpha=0.4, seed=ctx.seed)


def _focal(ctx: RunContext) -> Trick:
    from danlu.loss import Focal

    return Focal(gamma=2.0)


def _smooth(ctx: RunContext) -> Trick:
    from danlu.loss import LabelSmoothing

    return LabelSmoothing(0.1)


def _eda(train: TextDataset, task: Task, seed: int) -> TextDataset:
    from danlu.data.augment import augment
    from danlu.data.eda import EDA, eda_params

    alpha, n_aug = eda_params(len(train))
    eda = EDA(alpha, alpha, alpha, alpha, n_aug=n_aug, lang=task.lang)
    out = augment(train.texts, train.labels, eda, seed=seed, progress=False)
    return TextDataset(out.texts, out.labels, train.label_names)


def decay_groups(model: nn.Module, task: Task, decay: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norm weights; lr decayed by layer depth
    when ``decay < 1`` (``decay=1``: the base's groups, one lr)."""
    from danlu.optim import layer_decay_groups

    depth_fn = task.depth_fn if decay < 1.0 else (lambda name: 0)
    return layer_decay_groups(model, task.lr, decay, task.weight_decay, depth_fn=depth_fn)


def _layer_decay(model: nn.Module, task: Task) -> list[dict[str, Any]]:
    return decay_groups(model, task, decay=0.8)


def _tta(ctx: RunContext, model: nn.Module, texts: list[str]) -> torch.Tensor:
    """Test-time augmentation: the mean probabilities of the texts and 4 EDA swap/delete
    views (no synonym data needed, so the same for every language)."""
    from danlu.data.eda import EDA
    from danlu.predict import TTA

    size = ctx.task.eval_batch_size

    def logits(batch_texts: list[str]) -> torch.Tensor:
        inputs, n = ctx.encode(batch_texts), len(batch_texts)
        placeholder = torch.zeros(n, dtype=torch.long)  # labels: only the logits are used
        return torch.cat([
            ctx.task.loss_fn(model, {**{k: v[i : i + size] for k, v in inputs.items()},
                                     "labels": placeholder[i : i + size]})[1]
            for i in range(0, n, size)
        ])  # fmt: skip

    eda = EDA(alpha_sr=0, alpha_ri=0, alpha_rs=0.1, p_rd=0.1, n_aug=4, lang=ctx.task.lang)
    return torch.from_numpy(TTA(eda, n_views=4, seed=ctx.seed)(logits, texts)).float()


def _reinit(ctx: RunContext) -> None:
    """Zhang et al. 2021: the top encoder block, pooler and head re-drawn with the model's
    own init (seeded by the run's seed)."""
    from danlu.nn import reinit_top_layers

    reinit_top_layers(ctx.model, 1, seed=ctx.seed)


def _layer_decay_high_lr(model: nn.Module, task: Task) -> list[dict[str, Any]]:
    """Layer decay 0.8 with the head at 3x the task's lr (the seeds' advice to raise the
    base lr with decay: the lower layers then train at about the task's lr, not far below)."""
    from danlu.optim import layer_decay_groups

    return layer_decay_groups(model, 3 * task.lr, 0.8, task.weight_decay, depth_fn=task.depth_fn)


def _head_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over a head's labelled rows (target != -100) and divided by all
    the batch's rows: the head weighs as in the joint cross-entropy, so weights 1/1 give the
    base's loss exactly."""
    return F.cross_entropy(logits, target, ignore_index=-100, reduction="sum") / len(target)


LOG_VAR_LR = 1e-2  # Kendall's log-variances: their own lr (at a fine-tuning lr they barely move)


def _multitask(method: str, ctx: RunContext) -> Trick:
    """The task's heads (``Task.heads``) balanced by ``MultiTaskLoss(method)``. Kendall's
    log-variances get a param group of their own, lr ``LOG_VAR_LR`` without weight decay,
    under the run's warmup/decay schedule (built after the tricks): at the task's lr
    (2e-3 on the built-in tasks, 2e-5 for a BERT fine-tune) they would hardly leave 0 in a
    few hundred steps, and Adam moves a parameter by about its lr per step."""
    from danlu.loss import MultiTask, MultiTaskLoss

    heads = ctx.task.heads
    if heads is None:
        raise ValueError(
            f"atom 'mt_{method}' balances the heads of a multi-head task, but task "
            f"{ctx.task.name!r} has one head (Task.heads is None): set Task.heads to split "
            "the model's output and labels per head (see the built-in 'rotten-mt'), or drop "
            "the atom"
        )
    crit = MultiTaskLoss(dict.fromkeys(heads, _head_loss), method)  # type: ignore[arg-type]
    if crit.log_vars is not None and ctx.optimizer is not None:
        group = {"params": [crit.log_vars], "lr": LOG_VAR_LR, "weight_decay": 0.0}
        if "param_names" in ctx.optimizer.param_groups[0]:  # torch: all groups named or none
            group["param_names"] = ["multitask.log_vars"]
        ctx.optimizer.add_param_group(group)
    return MultiTask(crit, heads_fn=functools.partial(_split_heads, heads))


def _split_heads(heads: dict[str, Any], logits: torch.Tensor, batch: dict[str, Any]):
    return {k: head(logits, batch["labels"]) for k, head in heads.items()}


def _semi_trick(name: str, ctx: RunContext) -> Trick:
    from danlu.semi import _lab

    return getattr(_lab, name)(ctx)


def _semi(name: str) -> Callable[[RunContext], Trick]:
    """The semi-supervised / noise atom ``name`` of :mod:`danlu.semi._lab`, imported lazily
    (a partial, so atoms stay picklable for worker processes)."""
    return functools.partial(_semi_trick, name)


ATOMS: dict[str, Atom] = {
    a.name: a
    for a in (
        Atom("base", "no trick: AdamW, linear warmup/decay, clipping (every combo has these)", "base"),
        Atom("eda", "EDA (Wei & Zou 2019) with the paper's alpha/n_aug for the train size", "data",
             augment=_eda),
        Atom("mixup", "embedding mixup, alpha 0.4", "loss", make_trick=_mixup),
        Atom("fgm", "FGM on the input embedding, eps 1.0 (~2x a step)", "adversarial",
             make_trick=_fgm),
        Atom("pgd", "PGD on the input embedding, eps 1.0, alpha 0.3, 3 steps (~4x a step)",
             "adversarial", make_trick=_pgd),
        Atom("freelb", "FreeLB on the embedding output, 3 ascent steps, alpha 0.1 (~4x a step)",
             "adversarial", make_trick=_freelb),
        Atom("awp", "AWP on the weights, adv_lr 1.0, adv_eps 0.01, from the 2nd epoch (~2x a step)",
             "adversarial", make_trick=_awp),
        Atom("rdrop", "R-Drop, two dropout passes + symmetric KL, alpha 1.0 (~2x a step)",
             "regulariser", make_trick=_rdrop),
        Atom("focal", "focal loss, gamma 2", "loss", make_trick=_focal),
        Atom("smooth", "label smoothing 0.1", "loss", make_trick=_smooth),
        Atom("ld", "layer-wise lr decay 0.8 (needs Task.depth_fn or an HF encoder)", "optim",
             param_groups=_layer_decay),
        Atom("ema", "EMA of the weights, decay 0.99 with warmup; evaluated with EMA weights",
             "weights", make_trick=_ema, eval_weights=_ema_weights),
        Atom("swa", "SWA (torch swa_utils) over the last quarter of the epochs; evaluated "
             "with the averaged weights", "weights", make_trick=_swa, eval_weights=_swa_weights),
        Atom("tta", "test-time augmentation at evaluation only: mean probabilities of the text "
             "and 4 EDA swap/delete views (~5x the prediction cost)", "predict", predict=_tta),
        Atom("reinit", "re-initialise the top encoder block, pooler and head before training "
             "(Zhang et al. 2021; pretrained encoders)", "init", prepare_model=_reinit),
        Atom("ld3x", "layer-wise lr decay 0.8 with the head at 3x the task lr", "optim",
             param_groups=_layer_decay_high_lr),
        Atom("uda", "UDA consistency on unlabelled batches (EDA swap/delete view), alpha 1, "
             "T 0.4, threshold 0.8 (~3x a step)", "semi", make_trick=_semi("uda")),
        Atom("uda_late", "UDA as above, from the second half of the epochs (Delayed)", "semi",
             make_trick=_semi("uda_late")),
        Atom("fixmatch", "FixMatch on unlabelled batches (weak: text, strong: EDA swap/delete), "
             "threshold 0.95 (~3x a step)", "semi", make_trick=_semi("fixmatch")),
        Atom("pseudo", "pseudo-labels from the second half of the epochs: re-labels up to 2000 "
             "unlabelled texts each epoch, p >= 0.9, <= n_train/C per class", "semi",
             make_trick=_semi("pseudo")),
        Atom("vat", "VAT on unlabelled batches, eps 1.0, 1 power iteration (~4x a step)", "semi",
             make_trick=_semi("vat")),
        Atom("noise", "Gaussian noise on the embedding output, std 0.1x the embedding's", "noise",
             make_trick=_semi("noise")),
        Atom("neftune", "NEFTune noise on the embedding output, alpha 5", "noise",
             make_trick=_semi("neftune")),
        Atom("mt_uncertainty", "multi-task: the task's heads weighted by learned uncertainty "
             "(Kendall et al. 2018); needs Task.heads", "loss",
             make_trick=functools.partial(_multitask, "uncertainty")),
        Atom("mt_dwa", "multi-task: the task's heads weighted by dynamic weight averaging, T 2 "
             "(Liu et al. 2019); needs Task.heads", "loss",
             make_trick=functools.partial(_multitask, "dwa")),
        Atom("fgm_late", "FGM eps 1.0 from the second half of the epochs (Delayed)",
             "adversarial", make_trick=_semi("fgm_late")),
    )
}  # fmt: skip


def parse_combo(combo: str, atoms: dict[str, Atom] | None = None) -> list[Atom]:
    """The atoms of ``"fgm+ema"``, in registry order; ``"base"`` is the empty stack.

    Raises ValueError for an unknown atom (listing the known ones), a repeated atom,
    ``base`` inside a stack, or two atoms of one family (e.g. ``focal+smooth``)."""
    atoms = ATOMS if atoms is None else atoms
    if not isinstance(combo, str) or not combo.strip():
        raise ValueError(f"a combo must be a non-empty string like 'fgm+ema', got {combo!r}")
    names = [n.strip() for n in combo.split("+")]
    unknown = [n for n in names if n not in atoms]
    if unknown:
        raise ValueError(
            f"unknown trick {unknown[0]!r} in combo {combo!r}; known: {', '.join(atoms)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"combo {combo!r} names a trick twice")
    if names == ["base"]:
        return []
    if "base" in names:
        raise ValueError(
            f"'base' is the empty stack and cannot be stacked: write {combo.replace('base+', '').replace('+base', '')!r}"
        )
    picked = [a for a in atoms.values() if a.name in names]
    predicting = [a.name for a in picked if a.predict is not None]
    if len(predicting) > 1:
        raise ValueError(
            f"combo {combo!r} stacks {predicting}, which all replace the prediction: pick one"
        )
    seen: dict[str, str] = {}
    for a in picked:
        if a.family != "regulariser" and a.family in seen:
            raise ValueError(
                f"combo {combo!r} stacks {seen[a.family]!r} and {a.name!r}, two {a.family} "
                "tricks: pick one"
            )
        seen[a.family] = a.name
    return picked


def canonical_combo(combo: str, atoms: dict[str, Atom] | None = None) -> str:
    """``combo`` with its atoms in registry order (``ema+fgm`` → ``fgm+ema``)."""
    picked = parse_combo(combo, atoms)
    return "+".join(a.name for a in picked) or "base"


def step_key(combo: str, atoms: dict[str, Atom] | None = None) -> str | None:
    """The data atoms of ``combo`` that change its number of optimizer steps (``"eda"``),
    or None when it takes as many steps as base."""
    data = [a.name for a in parse_combo(combo, atoms) if a.augment is not None]
    return "+".join(data) or None
