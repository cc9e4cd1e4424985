"""The lab's semi-supervised and noise atoms (``uda``, ``fixmatch``, ``pseudo``, ``vat``,
``noise``, ``neftune`` and the delayed ``uda_late``, ``fgm_late``): each builds its trick
from a :class:`~danlu.lab.atoms.RunContext`, drawing unlabelled batches from the run's
unlabelled texts (``Task.unlabelled``; the built-in tasks give the rest of their pool).
The settings are the papers' / seeds' recommended ones, fixed so that runs compare."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from danlu.core import Trick

if TYPE_CHECKING:
    from danlu.lab.atoms import RunContext

#: the unlabelled texts a pseudo-labelling run predicts each epoch (a seeded sample)
PSEUDO_POOL = 2000


def _texts(ctx: RunContext, atom: str) -> list[str]:
    if ctx.unlabelled is None or len(ctx.unlabelled) == 0:
        raise ValueError(
            f"atom {atom!r} needs unlabelled texts, but task {ctx.task.name!r} has none for "
            "this run: set Task.unlabelled ('rest' of the pool, a TextDataset or a callable), "
            "or run with n_train below the pool size"
        )
    if ctx.encode is None:
        raise ValueError(f"atom {atom!r} needs the task's encoder (RunContext.encode)")
    return list(ctx.unlabelled.texts)


class _Batches:
    """Re-iterable unlabelled batches: each pass shuffles the texts (seeded) and encodes
    ``batch_size`` of them at a time, as (clean, EDA swap/delete view) pairs or alone."""

    def __init__(self, ctx: RunContext, texts: list[str], pairs: bool) -> None:
        from danlu.data.eda import EDA
        from danlu.semi.unlabelled import text_views

        self.texts, self.size, self.encode = texts, ctx.batch_size, ctx.encode
        self.gen = torch.Generator().manual_seed(ctx.seed)
        eda = EDA(alpha_sr=0, alpha_ri=0, alpha_rs=0.1, p_rd=0.1, n_aug=1, lang=ctx.task.lang)
        self.collate = text_views(ctx.encode, eda, seed=ctx.seed) if pairs else ctx.encode

    def __len__(self) -> int:
        return -(-len(self.texts) // self.size)

    def __iter__(self) -> Iterator[Any]:
        order = torch.randperm(len(self.texts), generator=self.gen).tolist()
        for i in range(0, len(order), self.size):
            yield self.collate([self.texts[j] for j in order[i : i + self.size]])


def _logits_fn(ctx: RunContext):
    """Logits through the task's own loss_fn; the placeholder labels only feed the loss,
    which is discarded: no gradient comes from them."""

    def logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = len(next(iter(batch.values())))
        return ctx.task.loss_fn(model, {**batch, "labels": torch.zeros(n, dtype=torch.long)})[1]

    return logits


def uda(ctx: RunContext) -> Trick:
    from danlu.semi import UDA

    pairs = _Batches(ctx, _texts(ctx, "uda"), pairs=True)
    return UDA(pairs, alpha=1.0, temperature=0.4, threshold=0.8, logits_fn=_logits_fn(ctx))


def uda_late(ctx: RunContext) -> Trick:
    from danlu.delayed import Delayed

    return Delayed(uda(ctx), start_epoch=max(1, ctx.epochs // 2))


def fixmatch(ctx: RunContext) -> Trick:
    from danlu.semi import FixMatch

    pairs = _Batches(ctx, _texts(ctx, "fixmatch"), pairs=True)
    return FixMatch(pairs, alpha=1.0, threshold=0.95, logits_fn=_logits_fn(ctx))


def vat(ctx: RunContext) -> Trick:
    from danlu.adversarial import VAT

    batches = _Batches(ctx, _texts(ctx, "vat"), pairs=False)
    return VAT(ctx.model, batches, alpha=1.0, eps=1.0, logits_fn=_logits_fn(ctx),
               generator=torch.Generator().manual_seed(ctx.seed))  # fmt: skip


def pseudo(ctx: RunContext) -> Trick:
    from danlu.semi import PseudoLabel

    texts = _texts(ctx, "pseudo")
    keep = torch.randperm(len(texts), generator=torch.Generator().manual_seed(ctx.seed))
    texts = [texts[i] for i in keep[:PSEUDO_POOL].tolist()]
    size = ctx.task.eval_batch_size
    batches = [ctx.encode(texts[i : i + size]) for i in range(0, len(texts), size)]
    n_classes = len(ctx.unlabelled.label_names)
    return PseudoLabel(batches, alpha=1.0, start_epoch=max(1, ctx.epochs // 2),
                       threshold=0.9, max_per_class=ctx.n_train // n_classes,
                       logits_fn=_logits_fn(ctx))  # fmt: skip


def _embedding_std(ctx: RunContext) -> float:
    from danlu.adversarial import find_embedding

    return float(find_embedding(ctx.model).detach().float().std())


def noise(ctx: RunContext) -> Trick:
    from danlu.adversarial import GaussianNoise

    return GaussianNoise(ctx.model, std=0.1 * _embedding_std(ctx),
                         generator=torch.Generator().manual_seed(ctx.seed))  # fmt: skip


def neftune(ctx: RunContext) -> Trick:
    from danlu.adversarial import NEFTune

    return NEFTune(ctx.model, alpha=5.0, generator=torch.Generator().manual_seed(ctx.seed))


def fgm_late(ctx: RunContext) -> Trick:
    from danlu.adversarial import FGM
    from danlu.delayed import Delayed

    return Delayed(FGM(ctx.model, eps=1.0), start_epoch=max(1, ctx.epochs // 2))
