"""danlu.predict.snapshot: cosine restarts and snapshot steps at the configured cycle lengths,
a skipped fp16 step advances nothing, prediction averaging against a hand loop, the SWA
cyclic-lr recipe against average_checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import TinyTextClassifier, clone_params, loss_fn, make_batch

from danlu import Tricks
from danlu.kfold import softmax
from danlu.optim import SWA, average_checkpoints
from danlu.predict import SnapshotEnsemble, cycle_ends, ensemble_predict


def _cosine(base, low, t, length):
    return low + (base - low) * (1 + math.cos(math.pi * t / length)) / 2


def _hand_lrs(base, low, cycle, mult, steps):
    """The lr used by each optimizer step, written out from the SGDR formula."""
    out, t, length = [], 0, cycle
    for _ in range(steps):
        out.append(_cosine(base, low, t, length))
        t += 1
        if t == length:
            t, length = 0, length * mult
    return out


@pytest.mark.parametrize(("cycle", "mult"), [(3, 1), (2, 2)])
def test_restarts_and_snapshots_at_the_cycle_ends(cycle, mult):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = SnapshotEnsemble(model, opt, cycle, cycle_mult=mult, min_lr=0.01)
    tricks = Tricks([snap])
    lrs, weights = [], {}
    for i in range(9):
        lrs.append(opt.param_groups[0]["lr"])
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
        weights[i + 1] = clone_params(model)
    np.testing.assert_allclose(lrs, _hand_lrs(0.1, 0.01, cycle, mult, 9), atol=1e-12)
    ends = [e for e in cycle_ends(cycle, 9, mult) if e <= 9]
    assert ends == ([3, 6, 9] if mult == 1 else [2, 6])
    assert [snap.is_cycle_end(s) for s in range(1, 10)] == [s in ends for s in range(1, 10)]
    assert len(snap.snapshots) == len(ends)
    for sd, end in zip(snap.snapshots, ends):
        for k, v in sd.items():
            assert torch.equal(v, weights[end][k]), (end, k)


def test_hand_written_loop_with_update_equals_the_trick():
    def run(use_tricks):
        torch.manual_seed(0)
        model = TinyTextClassifier()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        snap = SnapshotEnsemble(model, opt, cycle_steps=2)
        tricks = Tricks([snap])
        for i in range(5):
            if use_tricks:
                tricks.step(model, opt, make_batch(seed=i), loss_fn)
                continue
            loss_fn(model, make_batch(seed=i))[0].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            snap.update(step=i + 1)
        return snap

    s_a, s_b = run(True), run(False)
    assert len(s_a.snapshots) == len(s_b.snapshots) == 2
    for a, b in zip(s_a.snapshots, s_b.snapshots):
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-7, rtol=0)
    assert s_a.scheduler.get_last_lr() == s_b.scheduler.get_last_lr()


def test_a_skipped_fp16_step_advances_neither_schedule_nor_snapshots():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = SnapshotEnsemble(model, opt, cycle_steps=2)
    tricks = Tricks([snap], amp="fp16")

    def inf_loss(m, b):
        loss, logits = loss_fn(m, b)
        return loss * math.inf, logits

    lrs, snapshot_steps = [], []
    for i in range(6):
        lr = opt.param_groups[0]["lr"]
        st = tricks.step(model, opt, make_batch(seed=i), inf_loss if i in (1, 2) else loss_fn)
        assert st.stepped == (i not in (1, 2))
        if st.stepped:
            lrs.append(lr)
        if len(snap.snapshots) > len(snapshot_steps):
            snapshot_steps.append(st.step)
    assert tricks.state.step == 4 and snap.scheduler.last_epoch == 4
    np.testing.assert_allclose(lrs, _hand_lrs(0.1, 0.0, 2, 1, 4), atol=1e-12)
    assert snapshot_steps == [2, 4]


def _predict_fn(batch):
    return lambda m: m(batch["input_ids"])


def _checkpoints(n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        out.append(TinyTextClassifier().state_dict())
    return out


@pytest.mark.parametrize("method", ["mean_probs", "mean_logits"])
def test_prediction_averaging_against_a_hand_loop(tmp_path, method):
    batch = make_batch(n=10)
    ckpts = _checkpoints()
    model = TinyTextClassifier()
    own = clone_params(model)
    expected = []
    for sd in ckpts:
        ref = TinyTextClassifier()
        ref.load_state_dict(sd)
        z = ref(batch["input_ids"]).detach().double().numpy()
        expected.append(softmax(z) if method == "mean_probs" else z)
    got = ensemble_predict(model, ckpts, _predict_fn(batch), method)
    np.testing.assert_allclose(got, np.mean(expected, 0), atol=1e-6)
    for k, v in model.state_dict().items():  # the model's own weights are back
        assert torch.equal(v, own[k]), k
    paths = []
    for i, sd in enumerate(ckpts):
        paths.append(tmp_path / f"{i}.pt")
        torch.save(sd, paths[-1])
    np.testing.assert_allclose(ensemble_predict(model, paths, _predict_fn(batch), method), got)


def test_weights_are_restored_after_an_error():
    model = TinyTextClassifier()
    own = clone_params(model)
    bad = {**_checkpoints(1)[0], "extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="extra.weight"):
        ensemble_predict(model, [_checkpoints(1)[0], bad], _predict_fn(make_batch()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, own[k]), k
    with pytest.raises(ValueError, match="empty"):
        ensemble_predict(model, [], _predict_fn(make_batch()))


def test_on_disk_snapshots_and_the_swa_cyclic_lr_recipe(tmp_path):
    """SWA averaging every cycle end beside the restarts equals averaging the snapshots."""
    torch.manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    snap = SnapshotEnsemble(model, opt, cycle_steps=3, out_dir=tmp_path / "snaps")
    swa = SWA(model, start_step=3, every=3)
    tricks = Tricks([swa, snap])
    for i in range(9):
        tricks.step(model, opt, make_batch(seed=i), loss_fn)
    assert [p.name for p in snap.snapshots] == [f"snapshot_{k}.pt" for k in range(3)]
    assert swa.n_averaged == 3
    averaged = average_checkpoints(snap.snapshots)
    for k, v in swa.averaged.module.state_dict().items():
        torch.testing.assert_close(v, averaged[k], atol=1e-6, rtol=0)
    restored = SnapshotEnsemble(TinyTextClassifier(), opt, cycle_steps=3)
    restored.load_state_dict(snap.state_dict())
    assert restored.snapshots == snap.snapshots


def test_trainable_only_leaves_frozen_parameters_out():
    model = TinyTextClassifier()
    model.embed.weight.requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    snap = SnapshotEnsemble(model, opt, cycle_steps=1)
    snap.snapshot()
    assert "embed.weight" not in snap.snapshots[0] and "head.weight" in snap.snapshots[0]


def test_errors_name_the_argument():
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="cycle_steps"):
        SnapshotEnsemble(model, opt, cycle_steps=0)
    with pytest.raises(ValueError, match="cycle_mult"):
        SnapshotEnsemble(model, opt, cycle_steps=2, cycle_mult=0)
    with pytest.raises(ValueError, match="min_lr"):
        SnapshotEnsemble(model, opt, cycle_steps=2, min_lr=-1.0)
    with pytest.raises(TypeError, match="optimizer"):
        SnapshotEnsemble(model, None, cycle_steps=2)
