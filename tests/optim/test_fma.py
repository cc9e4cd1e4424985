"""Checkpoint averaging, greedy soup and the FMA trick."""

from __future__ import annotations

import copy
import weakref

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch
from torch import nn

from danlu import Tricks
from danlu.optim import FMA, average_checkpoints, greedy_soup


def _state_dicts(n=3):
    out = []
    for seed in range(n):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        model(torch.randn(8, 4))  # num_batches_tracked = 1, running stats differ per seed
        out.append(model.state_dict())
    return out


def test_average_of_three_equals_hand_mean_and_keeps_inputs():
    sds = _state_dicts()
    copies = [{k: v.clone() for k, v in sd.items()} for sd in sds]
    avg = average_checkpoints(sds)
    assert avg.keys() == sds[0].keys()
    for k, v in avg.items():
        if v.is_floating_point():
            hand = (sds[0][k] + sds[1][k] + sds[2][k]) / 3
            torch.testing.assert_close(v, hand, atol=1e-7, rtol=0)
        else:
            assert torch.equal(v, sds[0][k]) and v.dtype == sds[0][k].dtype
    for sd, cp in zip(sds, copies):  # inputs untouched
        assert all(torch.equal(sd[k], cp[k]) for k in sd)
    assert avg["0.weight"].data_ptr() != sds[0]["0.weight"].data_ptr()


def test_average_keeps_low_precision_dtype():
    sds = [{"w": torch.full((3,), v, dtype=torch.bfloat16)} for v in (1.0, 1.0078125, 1.0078125)]
    avg = average_checkpoints(sds)
    assert avg["w"].dtype == torch.bfloat16
    expected = torch.tensor((1.0 + 2 * 1.0078125) / 3).to(torch.bfloat16)
    assert torch.equal(avg["w"], expected.expand(3))


def test_single_checkpoint_is_returned_as_a_copy():
    sd = {"w": torch.arange(4.0)}
    avg = average_checkpoints([sd])
    assert torch.equal(avg["w"], sd["w"]) and avg["w"] is not sd["w"]


def test_streaming_from_files_one_in_memory_at_a_time(tmp_path, monkeypatch):
    sds = _state_dicts(4)
    paths = []
    for i, sd in enumerate(sds):
        paths.append(tmp_path / f"ckpt{i}.pt")
        torch.save(sd, paths[-1])
    alive = []
    real_load = torch.load

    def tracking_load(*args, **kwargs):
        assert all(ref() is None for ref in alive), "an earlier checkpoint is still in memory"
        sd = real_load(*args, **kwargs)
        alive.append(weakref.ref(sd["0.weight"]))
        return sd

    monkeypatch.setattr(torch, "load", tracking_load)
    from_files = average_checkpoints(str(p) for p in paths)  # a generator is fine
    assert len(alive) == 4
    monkeypatch.setattr(torch, "load", real_load)
    in_memory = average_checkpoints(sds)
    for k in in_memory:
        assert torch.equal(from_files[k], in_memory[k]), k


def test_mismatched_keys_and_shapes_are_refused():
    a = nn.Linear(4, 3).state_dict()
    with pytest.raises(ValueError, match=r"checkpoint 1.*missing keys \['bias'\]"):
        average_checkpoints([a, {"weight": a["weight"]}])
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        average_checkpoints([a, {**a, "extra": torch.zeros(1)}])
    with pytest.raises(ValueError, match=r"'weight' has shape \(2, 4\)"):
        average_checkpoints([a, nn.Linear(4, 2).state_dict() | {"bias": a["bias"]}])
    with pytest.raises(TypeError, match="'step' is a int"):
        average_checkpoints([{**a, "step": 3}])
    with pytest.raises(TypeError, match="expected a state_dict"):
        average_checkpoints([[1, 2]])
    with pytest.raises(ValueError, match="at least one"):
        average_checkpoints([])


def test_greedy_soup_picks_the_expected_ingredients():
    weights = [1.0, -1.2, 3.0, -0.9]  # scores -|w|: -1.0, -1.2, -3.0, -0.9
    sds = [{"w": torch.tensor([w])} for w in weights]
    calls = []

    def eval_fn(sd):
        calls.append(sd["w"].item())
        return -sd["w"].abs().item()

    soup = greedy_soup(sds, eval_fn)
    # best first: -0.9; + 1.0 -> mean 0.05 (better, kept); + -1.2 -> -0.367 (worse);
    # + 3.0 -> 1.033 (worse)
    assert soup.ingredients == [3, 0]
    assert soup.state_dict["w"].item() == pytest.approx(0.05)
    assert soup.score == pytest.approx(-0.05)
    assert len(calls) == 4 + 3
    again = greedy_soup(sds, eval_fn, scores=[-1.0, -1.2, -3.0, -0.9])
    assert again.ingredients == [3, 0] and len(calls) == 7 + 3


def test_greedy_soup_keeps_ties_and_reads_files(tmp_path):
    paths = []
    for i, w in enumerate([2.0, 2.0, 5.0]):
        paths.append(tmp_path / f"{i}.pt")
        torch.save({"w": torch.tensor([w])}, paths[-1])
    soup = greedy_soup(paths, lambda sd: -abs(sd["w"].item() - 2.0))
    assert soup.ingredients == [0, 1]  # the equal second ingredient does not drop the score
    with pytest.raises(ValueError, match="2 scores for 3"):
        greedy_soup(paths, lambda sd: 0.0, scores=[1.0, 2.0])


def test_fma_trick_averages_epoch_end_weights_and_resumes():
    def make(seed):
        torch.manual_seed(seed)
        model = TinyTextClassifier()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        fma = FMA(model, start_epoch=2)
        return model, opt, fma, Tricks([fma])

    model, opt, fma, tricks = make(0)
    snapshots = []
    for epoch in range(1, 5):
        for i in range(2):
            tricks.step(model, opt, make_batch(seed=10 * epoch + i), loss_fn)
        tricks.epoch_end()
        if epoch >= 2:
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        if epoch == 2:
            saved = copy.deepcopy(tricks.state_dict())  # references, like nn.Module's
            saved_model = {k: v.clone() for k, v in model.state_dict().items()}
            saved_opt = copy.deepcopy(opt.state_dict())
    assert fma.count == 3
    avg = fma.average()
    for k in avg:
        hand = torch.stack([s[k] for s in snapshots]).mean(0)
        torch.testing.assert_close(avg[k], hand, atol=1e-6, rtol=0)

    model2, opt2, fma2, tricks2 = make(5)
    model2.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    tricks2.load_state_dict(saved)
    assert fma2.count == 1
    for epoch in range(3, 5):
        for i in range(2):
            tricks2.step(model2, opt2, make_batch(seed=10 * epoch + i), loss_fn)
        tricks2.epoch_end()
    for k, v in fma2.average().items():
        assert torch.equal(v, avg[k]), k


def test_fma_errors():
    with pytest.raises(ValueError, match="start_epoch"):
        FMA(nn.Linear(2, 2), start_epoch=0)
    with pytest.raises(ValueError, match="no parameters"):
        FMA(nn.ReLU())
    with pytest.raises(RuntimeError, match="no snapshot"):
        FMA(nn.Linear(2, 2)).average()
