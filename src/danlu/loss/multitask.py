"""Multi-task loss balancing: combine a dict of task losses with fixed weights, homoscedastic
uncertainty weighting (Kendall et al. 2018, https://arxiv.org/abs/1705.07115) or dynamic
weight averaging (DWA; Liu et al. 2019, https://arxiv.org/abs/1803.10704).

- fixed: ``L = sum_k w_k L_k``.
- uncertainty: one learned ``s_k = log sigma_k^2`` per task,
  ``L = sum_k ½ (exp(-s_k) L_k + s_k)`` (the paper's Gaussian form; a task with a noisy,
  large loss learns a large ``s_k`` and is down-weighted; ``s_k`` must be in the optimizer).
- dwa: ``w_k(t) = K softmax_k(r(t-1) / T)`` with ``r_k(t-1) = L_k(t-1) / L_k(t-2)`` the ratio
  of the task's mean loss over the last two epochs (a task whose loss falls slowly gets more
  weight); ``w_k = 1`` in the first two epochs.

Per-task class imbalance is handled by each task's own criterion (``nn.CrossEntropyLoss(weight=
...)``, :class:`danlu.loss.FocalLoss` ...), passed in as a dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from danlu._checks import check_temperature
from danlu.core import Order, State, Trick
from danlu.loss._swap import batch_field

__all__ = [
    "weighted_task_loss",
    "uncertainty_task_loss",
    "dwa_weights",
    "MultiTaskLoss",
    "MultiTask",
]

Method = Literal["fixed", "uncertainty", "dwa"]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HeadsFn = Callable[[torch.Tensor, Any], Mapping[str, tuple[torch.Tensor, torch.Tensor]]]


def _check_losses(losses: Mapping[str, torch.Tensor], tasks: Sequence[str] | None = None) -> None:
    if not isinstance(losses, Mapping) or not losses:
        raise ValueError(
            f"losses must be a non-empty dict task name -> scalar loss, got {losses!r}"
        )
    if tasks is not None and set(losses) != set(tasks):
        raise ValueError(
            f"losses must have one entry per task {sorted(tasks)}, got {sorted(losses)}"
        )
    bad = [k for k, v in losses.items() if not isinstance(v, torch.Tensor) or v.numel() != 1]
    if bad:
        raise ValueError(f"the losses of {bad} are not scalar tensors; reduce them first")


def _check_weights(weights: Mapping[str, float], tasks: Sequence[str]) -> dict[str, float]:
    if not isinstance(weights, Mapping) or set(weights) != set(tasks):
        got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
        raise ValueError(f"weights must have one entry per task {sorted(tasks)}, got {got}")
    bad = {
        k: w
        for k, w in weights.items()
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0
    }
    if bad:
        raise ValueError(f"weights must be finite numbers >= 0, got {bad}")
    return {k: float(w) for k, w in weights.items()}


def weighted_task_loss(
    losses: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None
) -> torch.Tensor:
    """``sum_k weights[k] · losses[k]`` (weights default to 1).

    Example:
        >>> weighted_task_loss({"a": torch.tensor(2.0), "b": torch.tensor(3.0)}, {"a": 1, "b": 0.5})
        tensor(3.5000)
    """
    _check_losses(losses)
    w = _check_weights(weights, list(losses)) if weights is not None else {}
    return sum(w.get(k, 1.0) * v.reshape(()) for k, v in losses.items())  # type: ignore[return-value]


def uncertainty_task_loss(
    losses: Mapping[str, torch.Tensor], log_vars: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """Kendall et al.'s homoscedastic uncertainty weighting,
    ``sum_k ½ (exp(-s_k) · L_k + s_k)`` with ``s_k = log_vars[k] = log sigma_k^2``.

    Example:
        >>> s = {"a": torch.tensor(0.0), "b": torch.tensor(math.log(4.0))}
        >>> uncertainty_task_loss({"a": torch.tensor(2.0), "b": torch.tensor(4.0)}, s)
        tensor(2.1931)
    """
    _check_losses(losses)
    if not isinstance(log_vars, Mapping) or set(log_vars) != set(losses):
        got = sorted(log_vars) if isinstance(log_vars, Mapping) else type(log_vars).__name__
        raise ValueError(f"log_vars must have one entry per task {sorted(losses)}, got {got}")
    return sum(  # type: ignore[return-value]
        0.5 * (torch.exp(-log_vars[k].reshape(())) * v.reshape(()) + log_vars[k].reshape(()))
        for k, v in losses.items()
    )


def dwa_weights(
    last: Mapping[str, float], before_last: Mapping[str, float], temperature: float = 2.0
) -> dict[str, float]:
    """DWA's weights from each task's mean loss over the last two epochs:
    ``w_k = K · exp(r_k / T) / sum_i exp(r_i / T)``, ``r_k = last[k] / before_last[k]``.

    Example:
        >>> w = dwa_weights({"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 1.0})   # b stalls
        >>> {k: round(v, 3) for k, v in w.items()}
        {'a': 0.876, 'b': 1.124}
    """
    temperature = check_temperature(temperature, "the paper uses 2")
    if set(last) != set(before_last) or not last:
        raise ValueError(
            f"last and before_last must name the same non-empty tasks, got {sorted(last)} "
            f"and {sorted(before_last)}"
        )
    bad = {k: v for k, v in before_last.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"before_last losses must be finite and > 0 (ratios), got {bad}")
    tasks = list(last)
    r = torch.tensor([last[k] / before_last[k] for k in tasks], dtype=torch.float64)
    w = len(tasks) * torch.softmax(r / temperature, dim=0)
    return {k: float(x) for k, x in zip(tasks, w)}


class MultiTaskLoss(nn.Module):
    """Combine task losses (or compute them from per-task logits) with one balancing method.

    Args:
        tasks: the task names, or a dict task -> criterion ``criterion(logits, target) ->
            loss`` (per-task class weights: ``nn.CrossEntropyLoss(weight=...)``; focal on
            one head: :class:`danlu.loss.FocalLoss`) to use :meth:`task_losses`.
        method: ``"fixed"`` (default), ``"uncertainty"`` (learned ``log_vars``, initialised
            at 0: add this module's parameters to the optimizer) or ``"dwa"`` (call
            :meth:`epoch_end` after every epoch; :class:`MultiTask` does it in
            ``tricks.epoch_end()``).
        weights: ``"fixed"`` only: task -> weight >= 0 (default 1 each).
        temperature: ``"dwa"`` only: T > 0 (the paper's 2; larger T → weights closer to 1).

    In training mode (``record=None``) every forward adds the losses to the epoch means DWA
    uses; the state (``log_vars``, DWA's sums and history) is in ``state_dict()``.

    Example:
        >>> crit = MultiTaskLoss({"intent": nn.CrossEntropyLoss(),
        ...                       "slot": nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0]))},
        ...                      method="uncertainty")
        >>> logits = {"intent": torch.randn(4, 3), "slot": torch.randn(4, 2)}
        >>> targets = {"intent": torch.tensor([0, 1, 2, 0]), "slot": torch.tensor([0, 1, 0, 0])}
        >>> loss = crit(crit.task_losses(logits, targets))
        >>> opt = torch.optim.AdamW([*model.parameters(), *crit.parameters()])  # doctest: +SKIP
    """

    def __init__(
        self,
        tasks: Sequence[str] | Mapping[str, Criterion],
        method: Method = "fixed",
        *,
        weights: Mapping[str, float] | None = None,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        if isinstance(tasks, str) or not isinstance(tasks, Sequence | Mapping) or not tasks:
            raise ValueError(
                f"tasks must be a non-empty list of task names or dict task -> criterion, "
                f"got {tasks!r}"
            )
        if method not in ("fixed", "uncertainty", "dwa"):
            raise ValueError(f"method must be 'fixed', 'uncertainty' or 'dwa', got {method!r}")
        if weights is not None and method != "fixed":
            raise ValueError(f"weights are for method='fixed'; {method!r} sets the weights itself")
        self.tasks = list(tasks)
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"task names must be unique, got {self.tasks}")
        self.criteria = dict(tasks) if isinstance(tasks, Mapping) else None
        if self.criteria is not None:
            bad = [k for k, c in self.criteria.items() if not callable(c)]
            if bad:
                raise TypeError(f"the criteria of {bad} are not callable (logits, target) -> loss")
        self.method = method
        self.weights = _check_weights(weights, self.tasks) if weights is not None else None
        self.temperature = check_temperature(temperature, "the paper uses 2")
        k = len(self.tasks)
        self.log_vars = nn.Parameter(torch.zeros(k)) if method == "uncertainty" else None
        # DWA: the running sums of this epoch, and the last two epochs' means (row 1 = last)
        self.register_buffer("loss_sums", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        self.register_buffer("epochs", torch.zeros((), dtype=torch.long))

    def task_losses(
        self, logits: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Each task's criterion on its logits and targets (``tasks`` must be a dict)."""
        if self.criteria is None:
            raise ValueError(
                "task_losses needs a criterion per task: pass tasks as a dict task -> criterion"
            )
        for what, d in (("logits", logits), ("targets", targets)):
            if not isinstance(d, Mapping) or set(d) != set(self.tasks):
                got = sorted(d) if isinstance(d, Mapping) else type(d).__name__
                raise ValueError(f"{what} must be a dict with the tasks {self.tasks}, got {got}")
        return {k: self.criteria[k](logits[k], targets[k]) for k in self.tasks}

    def current_weights(self) -> dict[str, float]:
        """The weight each task's loss gets now (uncertainty: ``½ exp(-s_k)``)."""
        if self.method == "uncertainty":
            return {
                k: 0.5 * math.exp(-float(s)) for k, s in zip(self.tasks, self.log_vars.tolist())
            }
        if self.method == "dwa":
            if int(self.epochs) < 2:
                return dict.fromkeys(self.tasks, 1.0)
            last, before = (dict(zip(self.tasks, row.tolist())) for row in self.history.flip(0))
            return dwa_weights(last, before, self.temperature)
        return dict(self.weights) if self.weights else dict.fromkeys(self.tasks, 1.0)

    def forward(
        self, losses: Mapping[str, torch.Tensor], *, record: bool | None = None
    ) -> torch.Tensor:
        _check_losses(losses, self.tasks)
        if record if record is not None else self.training:
            with torch.no_grad():
                self.loss_sums += torch.stack(
                    [losses[k].detach().double().reshape(()) for k in self.tasks]
                )
                self.loss_count += 1
        if self.method == "uncertainty":
            return uncertainty_task_loss(losses, dict(zip(self.tasks, self.log_vars)))
        return weighted_task_loss(losses, self.current_weights())

    def epoch_end(self) -> None:
        """Close an epoch: its mean task losses become DWA's latest history row."""
        if int(self.loss_count) == 0:
            return
        self.history[0] = self.history[1]
        self.history[1] = self.loss_sums / self.loss_count
        self.loss_sums.zero_()
        self.loss_count.zero_()
        self.epochs += 1

    def extra_repr(self) -> str:
        return f"tasks={self.tasks}, method={self.method!r}"


class MultiTask(Trick):
    """The :class:`MultiTaskLoss` as a ``Trick``: ``loss_fn`` returns ``(loss, logits)`` with
    ``logits`` a dict task -> logits (its loss is ignored), the batch holds a dict task ->
    labels under ``target_key``; per-task losses land in ``state.extra["task_losses"]``.

    A model whose output is one tensor holding every head (e.g. the joint log-probabilities
    of a hierarchical classifier) passes ``heads_fn``: the loss is computed on the heads it
    returns, while the other tricks and the caller keep seeing the original output.

    Args:
        loss: a :class:`MultiTaskLoss` built with a criterion per task.
        target_key: key of the dict of labels in a dict batch (default ``"labels"``).
        target_fn: ``target_fn(batch) -> dict task -> labels`` for other batch layouts.
        heads_fn: ``heads_fn(logits, batch) -> dict task -> (task_logits, task_labels)``:
            splits ``loss_fn``'s output and the batch into the tasks (replaces ``target_key``
            and ``target_fn``).

    Example:
        >>> crit = MultiTaskLoss({"a": nn.CrossEntropyLoss(), "b": nn.CrossEntropyLoss()}, "dwa")
        >>> def split(logits, batch):  # one (B, 5) output: 3 logits of a, then 2 of b
        ...     return {"a": (logits[:, :3], batch["labels"][:, 0]),
        ...             "b": (logits[:, 3:], batch["labels"][:, 1])}
        >>> tricks = danlu.Tricks([MultiTask(crit, heads_fn=split)])   # doctest: +SKIP
    """

    order = Order.LOSS
    replaces_loss = True

    def __init__(
        self,
        loss: MultiTaskLoss,
        target_key: str = "labels",
        target_fn: Callable[[Any], Mapping[str, torch.Tensor]] | None = None,
        heads_fn: HeadsFn | None = None,
    ) -> None:
        if not isinstance(loss, MultiTaskLoss) or loss.criteria is None:
            raise TypeError(
                f"loss must be a MultiTaskLoss built with a dict task -> criterion, got {loss!r}"
            )
        for name, fn in (("target_fn", target_fn), ("heads_fn", heads_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if target_fn is not None and heads_fn is not None:
            raise TypeError(
                "pass target_fn or heads_fn, not both: heads_fn returns the labels of each task"
            )
        self.loss, self.target_key, self.target_fn = loss, target_key, target_fn
        self.heads_fn = heads_fn
        self._recorded, self._checked = -1, False

    def compute_loss(self, forward, batch: Any, state: State):
        _, logits = forward(batch)
        if not self._checked and self.loss.log_vars is not None and state.optimizer is not None:
            opt_ids = {id(p) for g in state.optimizer.param_groups for p in g["params"]}
            if id(self.loss.log_vars) not in opt_ids:
                raise ValueError(
                    "method='uncertainty' learns log_vars, but they are not in the optimizer: "
                    "add MultiTaskLoss.parameters() to it"
                )
            self._checked = True
        if self.heads_fn is None:
            targets = batch_field(batch, self.target_key, self.target_fn, "labels")
            losses = self.loss.task_losses(logits, targets)
        else:
            heads = self.heads_fn(logits, batch)
            losses = self.loss.task_losses(
                {k: v[0] for k, v in heads.items()}, {k: v[1] for k, v in heads.items()}
            )
        record = state.model is None or state.model.training
        record = record and state.micro_step != self._recorded  # closures re-run the batch
        self._recorded = state.micro_step
        state.extra["task_losses"] = {k: v.detach() for k, v in losses.items()}
        return self.loss(losses, record=record), logits

    def on_epoch_end(self, state: State) -> None:
        self.loss.epoch_end()

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loss.load_state_dict(state_dict["loss"])

    def __repr__(self) -> str:
        return f"MultiTask({self.loss.tasks}, method={self.loss.method!r})"
