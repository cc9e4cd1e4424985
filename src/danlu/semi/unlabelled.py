"""Unlabelled data in the training loop: a second iterator of unlabelled batches, cycled, one
batch per micro-batch.

- :class:`UnlabelledStream` — the drop-in object: ``stream.next()`` cycles any re-iterable
  (a ``DataLoader``, a list of batches), with a checkpointable position.
- :class:`Unlabelled` — the :class:`danlu.Trick`: hands each micro-batch its unlabelled
  batch (``batch["unlabelled"]`` of a dict batch, ``(batch, unlabelled)`` otherwise, and
  ``state.extra["unlabelled"]``) for a ``loss_fn`` that uses it itself.
- :func:`text_views` — a collate function that makes the (clean, augmented) pair of views
  of raw texts with a danlu augmenter (EDA swap/delete by default), for UDA / FixMatch.
- :class:`ConsistencyTrick` — the shared shape of UDA, FixMatch and VAT on unlabelled
  batches: ``loss = supervised + alpha · term(unlabelled batch)``.

**Accumulation**: each micro-batch draws its own unlabelled batch, and its term is part of
the micro-batch's loss, so it is scaled like the supervised loss (``1/accumulate``): a window
of k micro-batches gives the mean term over k unlabelled batches, as one k times larger
batch would. Adversarial closures re-run the loss on the *same* unlabelled batch.

**DDP**: give the unlabelled loader its own ``DistributedSampler`` (each rank its shard,
``set_epoch`` it like the labelled one); every rank must draw on every micro-batch, since
the unlabelled forward is part of the loss that DDP synchronises. The consistency term is
averaged over ranks with the gradients.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from danlu.core import Order, State, Trick, unwrap_model
from danlu.loss.rdrop import _check_alpha

__all__ = [
    "UnlabelledStream",
    "Unlabelled",
    "text_views",
    "default_logits",
    "ConsistencyTrick",
    "check_probability",
]


def check_probability(name: str, value: float) -> float:
    """``value`` as a float in (0, 1], or a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ValueError(
            f"{name} must be a probability in (0, 1], got {value!r}; 1.0 keeps only "
            "predictions with full confidence, 0.9-0.95 is usual"
        )
    return float(value)


class UnlabelledStream:
    """Cycle an iterable of unlabelled batches forever.

    Args:
        iterable: something ``iter()`` can be called on again at the end of each pass (a
            ``DataLoader``, a list); a one-shot iterator works for one pass only.

    Raises:
        ValueError: at construction when ``len(iterable) == 0``, or at the first ``next()``
            when a pass yields nothing.

    Example:
        >>> s = UnlabelledStream([1, 2, 3])
        >>> [s.next() for _ in range(5)], s.passes
        ([1, 2, 3, 1, 2], 1)
    """

    def __init__(self, iterable: Iterable[Any]) -> None:
        if not isinstance(iterable, Iterable):
            raise TypeError(
                f"unlabelled must be an iterable of batches (a DataLoader, a list), got "
                f"{type(iterable).__name__}"
            )
        if hasattr(iterable, "__len__") and len(iterable) == 0:  # type: ignore[arg-type]
            raise ValueError(
                "the unlabelled iterable is empty (len 0): pass a DataLoader or list with at "
                "least one batch of unlabelled examples"
            )
        self.iterable = iterable
        self.passes = 0  # completed passes over the iterable
        self.position = 0  # batches drawn in the current pass
        self._it: Any = None

    def next(self) -> Any:
        """The next unlabelled batch, starting a new pass at the end of one."""
        if self._it is None:
            self._it = iter(self.iterable)
        try:
            item = next(self._it)
        except StopIteration:
            if self.position == 0:
                raise ValueError(
                    "the unlabelled iterable yielded no batch in a whole pass: it is empty "
                    "(or a one-shot iterator already used up); pass a DataLoader or list"
                ) from None
            self.passes, self.position = self.passes + 1, 0
            self._it = iter(self.iterable)
            return self.next()
        self.position += 1
        return item

    def state_dict(self) -> dict[str, int]:
        return {"passes": self.passes, "position": self.position}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Restore the counters and fast-forward to the saved position of the pass (exact
        for an iterable that repeats its order, e.g. a seeded sampler)."""
        self._it = iter(self.iterable)
        self.passes, self.position = state_dict["passes"], 0
        for _ in range(state_dict["position"]):
            next(self._it)
            self.position += 1


class Unlabelled(Trick):
    """Hand each micro-batch the next unlabelled batch, for a ``loss_fn`` that uses it.

    A dict batch becomes a new dict with the unlabelled batch under ``key``; any other batch
    becomes ``(batch, unlabelled_batch)``. The unlabelled batch is also in
    ``state.extra[key]``. The user's batch is never modified.

    Args:
        unlabelled: re-iterable of unlabelled batches (see :class:`UnlabelledStream`).
        key: the dict key / ``state.extra`` key (default ``"unlabelled"``).

    Example:
        >>> tricks = danlu.Tricks([Unlabelled(unlabelled_loader)])
        >>> def loss_fn(model, batch):           # batch["unlabelled"] is the extra batch
        ...     ...
    """

    order = Order.DATA

    def __init__(self, unlabelled: Iterable[Any], key: str = "unlabelled") -> None:
        self.stream = UnlabelledStream(unlabelled)
        self.key = key

    def on_batch(self, batch: Any, state: State) -> Any:
        u = self.stream.next()
        state.extra[self.key] = u
        return {**batch, self.key: u} if isinstance(batch, Mapping) else (batch, u)

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.stream.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"Unlabelled(key={self.key!r})"


def text_views(
    encode: Callable[[list[str]], Any],
    augmenter: Any = None,
    seed: int = 0,
) -> Callable[[Sequence[str]], tuple[Any, Any]]:
    """A collate function: a list of raw texts → ``(encode(texts), encode(augmented))``, the
    clean/weak and the augmented/strong views for :class:`~danlu.semi.UDA` and
    :class:`~danlu.semi.FixMatch`.

    Args:
        encode: ``encode(list_of_texts) -> batch`` (e.g. a tokenizer call returning tensors).
        augmenter: any danlu augmenter (``augment(text, rng) -> list[str]``, e.g.
            :class:`danlu.data.EDA`); default EDA random swap + deletion (0.1 each), which
            needs no synonym data. Its first new sentence is the view; a text without words
            is its own view.
        seed: seed of the ``random.Random`` the augmentations draw from.

    Example:
        >>> collate = text_views(lambda texts: texts, seed=0)
        >>> clean, aug = collate(["a fine and moving film"])
        >>> clean
        ['a fine and moving film']
    """
    if augmenter is None:
        from danlu.data.eda import EDA

        augmenter = EDA(alpha_sr=0.0, alpha_ri=0.0, alpha_rs=0.1, p_rd=0.1, n_aug=1)
    if not callable(getattr(augmenter, "augment", None)):
        raise TypeError(
            f"augmenter must have augment(text, rng) -> list[str] (a danlu augmenter such as "
            f"danlu.data.EDA), got {type(augmenter).__name__}"
        )
    rng = random.Random(seed)

    def collate(texts: Sequence[str]) -> tuple[Any, Any]:
        texts = list(texts)
        views = [(augmenter.augment(t, rng) or [t])[0] for t in texts]
        return encode(texts), encode(views)

    return collate


def default_logits(model: nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch)`` for a dict batch, ``model(batch)`` otherwise; the ``.logits`` of a
    Hugging Face output. Pass your own ``logits_fn(model, batch)`` for anything else."""
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    return getattr(out, "logits", out)


class ConsistencyTrick(Trick):
    """Base of the unlabelled consistency tricks: each micro-batch draws one unlabelled item,
    and ``compute_loss`` returns ``supervised + alpha · term(model, item)``; the closures of
    adversarial tricks reuse the same item. Subclasses define ``term``. The last term is in
    ``state.extra[<name>]`` (detached) for logging.

    Args:
        unlabelled: re-iterable of unlabelled items (see the subclass for their form);
            ``None`` to apply the term to the labelled batch itself (only :class:`VAT`).
        alpha: weight of the term (>= 0).
        logits_fn: ``logits_fn(model, batch) -> logits``; default :func:`default_logits`.
    """

    order = Order.LOSS_WRAP
    name = "consistency"

    def __init__(
        self,
        unlabelled: Iterable[Any] | None,
        alpha: float,
        logits_fn: Callable[[nn.Module, Any], torch.Tensor] | None,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.stream = None if unlabelled is None else UnlabelledStream(unlabelled)
        self.logits_fn = logits_fn or default_logits
        self._item: Any = None

    def term(self, model: nn.Module, item: Any, state: State | None = None) -> torch.Tensor:
        raise NotImplementedError

    def clean_logits(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Logits of the side that is a fixed target: no graph, DDP wrapper skipped."""
        with torch.no_grad():
            return self.logits_fn(unwrap_model(model), batch).detach()

    def on_batch(self, batch: Any, state: State) -> Any:
        if self.stream is not None:
            self._item = self.stream.next()
        return batch

    def compute_loss(self, forward, batch: Any, state: State):
        loss, logits = forward(batch)
        term = self.term(state.model, batch if self.stream is None else self._item, state)
        state.extra[self.name] = term.detach()
        return loss + self.alpha * term, logits

    def state_dict(self) -> dict:
        return {} if self.stream is None else {"stream": self.stream.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.stream is not None and "stream" in state_dict:
            self.stream.load_state_dict(state_dict["stream"])
        elif state_dict:
            super().load_state_dict(state_dict)


def views(item: Any, augment: Callable[[Any], Any] | None) -> tuple[Any, Any]:
    """``(item, augment(item))``, or the ``(clean, augmented)`` pair ``item`` already is."""
    if augment is not None:
        return item, augment(item)
    if isinstance(item, tuple | list) and len(item) == 2:
        return item[0], item[1]
    raise ValueError(
        f"without augment=, each unlabelled item must be a (clean, augmented) pair (e.g. from "
        f"danlu.semi.text_views), got a {type(item).__name__}; pass augment=<batch -> batch>"
    )
