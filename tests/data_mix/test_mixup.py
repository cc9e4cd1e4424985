"""danlu.data.mixup: functional core against textbook formulas, the Beta law (KS test),
the hook tricks against hand-written forwards, hook removal, FGM-style composition."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import TinyTextClassifier, loss_fn, make_batch, tiny_bert
from scipy import stats
from torch import nn

from danlu import Trick, Tricks
from danlu.data.mixup import (
    EmbeddingMixup,
    ManifoldMixup,
    SentenceMixup,
    mix_targets,
    mixing,
    mixup_batch,
    mixup_cross_entropy,
    sample_lambda,
    sample_permutation,
    soft_cross_entropy,
)


# ----------------------------------------------------------------------------- functional
def test_mixup_batch_is_an_exact_convex_combination():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    mb = mixup_batch(x, y, alpha=0.7, generator=torch.Generator().manual_seed(3))
    assert 0 <= mb.lam <= 1 and sorted(mb.index.tolist()) == list(range(6))
    x64 = x.double()
    ref = mb.lam * x64 + (1 - mb.lam) * x64[mb.index]
    torch.testing.assert_close(mb.x.double(), ref, atol=1e-6, rtol=0)
    assert torch.equal(mb.y_a, y) and torch.equal(mb.y_b, y[mb.index])
    # every output row lies on the segment between its two sources, at position lam
    for i, j in enumerate(mb.index.tolist()):
        if i != j:
            t = ((x64[i] - mb.x[i].double()) / (x64[i] - x64[j])).flatten()
            torch.testing.assert_close(t, torch.full_like(t, 1 - mb.lam), atol=1e-4, rtol=0)


def test_mixup_batch_with_given_lam_and_index_and_x_untouched():
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 2])
    x0 = x.clone()
    index = torch.tensor([2, 0, 1])
    mb = mixup_batch(x, y, alpha=1.0, lam=0.25, index=index)
    torch.testing.assert_close(mb.x, 0.25 * x + 0.75 * x[index])
    assert mb.lam == 0.25 and torch.equal(mb.index, index) and torch.equal(x, x0)
    soft = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # soft targets travel along
    mb = mixup_batch(x, soft, alpha=1.0, lam=0.25, index=index)
    assert torch.equal(mb.y_b, soft[index])


def test_same_seed_same_draws_and_global_rng_untouched():
    state = torch.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    a = [sample_lambda(0.4, torch.Generator().manual_seed(7)) for _ in range(2)]
    p1 = sample_permutation(10, torch.Generator().manual_seed(7))
    p2 = sample_permutation(10, torch.Generator().manual_seed(7))
    sample_lambda(0.4)  # unseeded path must not touch the global RNG either
    b = [sample_lambda(0.4, np.random.default_rng(5)) for _ in range(2)]
    q1, q2 = (sample_permutation(10, np.random.default_rng(5)) for _ in range(2))
    assert a[0] == a[1] and b[0] == b[1] and torch.equal(p1, p2) and torch.equal(q1, q2)
    assert sorted(q1.tolist()) == list(range(10)) and q1.dtype == torch.long
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_lambda_follows_beta(alpha, kind):
    g = torch.Generator().manual_seed(0) if kind == "torch" else np.random.default_rng(0)
    draws = [sample_lambda(alpha, g) for _ in range(3000)]
    assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 0.01
    # and it is not some other law: Beta(2a, 2a) / uniform differ enough to be rejected
    other = stats.beta(4 * alpha, 4 * alpha).cdf
    assert stats.kstest(draws, other).pvalue < 1e-6


def test_max_lambda_follows_the_folded_beta():
    g = torch.Generator().manual_seed(1)
    draws = np.array([sample_lambda(0.4, g, max_lambda=True) for _ in range(3000)])
    assert draws.min() >= 0.5
    beta = stats.beta(0.4, 0.4)
    assert stats.kstest(draws, lambda v: 2 * beta.cdf(v) - 1).pvalue > 0.01


def test_labels_are_mixed_with_the_same_lambda():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g)
    y_a, y_b = torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 3, 1, 0, 2])
    lam = 0.3
    soft = mix_targets(y_a, y_b, lam, 4)
    ref = torch.zeros(5, 4)
    ref[torch.arange(5), y_a] += lam
    ref[torch.arange(5), y_b] += 1 - lam
    torch.testing.assert_close(soft, ref)
    two_label = mixup_cross_entropy(logits, y_a, y_b, lam)
    torch.testing.assert_close(two_label, soft_cross_entropy(logits, soft))
    torch.testing.assert_close(two_label, F.cross_entropy(logits, soft))  # torch's prob targets
    # per-example lambda (cutmix): mean of per-example mixed losses
    lam_vec = torch.tensor([0.1, 0.5, 1.0, 0.0, 0.7])
    la = F.cross_entropy(logits, y_a, reduction="none")
    lb = F.cross_entropy(logits, y_b, reduction="none")
    torch.testing.assert_close(
        mixup_cross_entropy(logits, y_a, y_b, lam_vec), (lam_vec * la + (1 - lam_vec) * lb).mean()
    )
    torch.testing.assert_close(
        soft_cross_entropy(logits, mix_targets(y_a, y_b, lam_vec, 4)),
        mixup_cross_entropy(logits, y_a, y_b, lam_vec),
    )


def test_mixing_context_manager_mixes_output_and_input_and_removes_hooks():
    emb = nn.Embedding(10, 3)
    ids, index = torch.tensor([[1, 2], [3, 4], [5, 6]]), torch.tensor([2, 0, 1])
    with mixing(emb, 0.6, index):
        out = emb(ids)
    e = emb.weight[ids].detach().double()
    torch.testing.assert_close(out.detach().double(), 0.6 * e + 0.4 * e[index], atol=1e-6, rtol=0)
    lin = nn.Linear(3, 2)
    x = torch.randn(3, 3)
    with mixing(lin, 0.2, index, where="input"):
        y = lin(x)
    torch.testing.assert_close(y, lin(0.2 * x + 0.8 * x[index]))
    assert not emb._forward_hooks and not lin._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"), mixing(emb, 0.5, index):
        raise RuntimeError("boom")
    assert not emb._forward_hooks
    with mixing(emb, 0.5, index) as calls:
        emb(ids)
        emb(ids)
    assert len(calls) == 2
    with pytest.raises(TypeError, match="keyword arguments only"), mixing(lin, 0.5, index, "input"):
        lin(input=x)


# ----------------------------------------------------------------------------- tricks
def _tiny_reference_loss(model, batch, lam, index, where):
    """TinyTextClassifier's forward written out by hand with the mixing at ``where``."""
    ids, y = batch["input_ids"], batch["labels"]
    mask = batch["attention_mask"].float()
    e = model.embed.weight[ids]
    if where == "embed":
        e = lam * e + (1 - lam) * e[index]
        mask = torch.maximum(mask, mask[index])
    m = mask.unsqueeze(-1)
    pooled = (e * m).sum(1) / m.sum(1).clamp_min(1.0)
    h = pooled @ model.hidden.weight.T + model.hidden.bias
    if where == "hidden":
        h = lam * h + (1 - lam) * h[index]
    h = torch.tanh(h)
    if where == "head":
        h = lam * h + (1 - lam) * h[index]
    logits = h @ model.head.weight.T + model.head.bias
    return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[index])


def _padded_batch():
    b = make_batch(n=6, seq=7, seed=3)
    mask = torch.ones(6, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[4, 2:] = 0
    b["input_ids"] = b["input_ids"] * mask
    b["attention_mask"] = mask
    return b


@pytest.mark.parametrize(
    "make_trick, where",
    [
        (lambda: EmbeddingMixup(alpha=0.5, seed=1), "embed"),
        (lambda: ManifoldMixup("hidden", alpha=0.5, seed=1), "hidden"),
        (lambda: SentenceMixup("head", alpha=0.5, where="input", seed=1), "head"),
    ],
)
def test_trick_loss_matches_hand_written_forward(make_trick, where):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    ref_model = copy.deepcopy(model)
    trick = make_trick()
    batch = _padded_batch()
    frozen = {k: v.clone() for k, v in batch.items()}
    state = Tricks([trick]).step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, loss_fn)
    expected = _tiny_reference_loss(ref_model, batch, trick.lam, trick.index, where)
    torch.testing.assert_close(state.loss, expected.detach(), atol=1e-6, rtol=0)
    assert 0 < trick.lam < 1 and not torch.equal(trick.index, torch.arange(6))
    assert all(torch.equal(batch[k], frozen[k]) for k in batch), "the user's batch was mutated"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hook_is_removed_when_the_forward_raises():
    model = TinyTextClassifier()
    trick = EmbeddingMixup(alpha=0.4)

    def bad_loss(m, b):
        m(b["input_ids"])
        raise RuntimeError("loss exploded")

    with pytest.raises(RuntimeError, match="loss exploded"):
        Tricks([trick]).step(
            model, torch.optim.SGD(model.parameters(), lr=0.1), make_batch(), bad_loss
        )
    assert not model.embed._forward_hooks


class _AdversarialProbe(Trick):
    """A textbook FGM written in the test: perturb the embedding along its gradient, run
    the closure, record what the closure's forward saw, restore."""

    order = 30

    def __init__(self, model, eps=0.5):
        self.model, self.eps = model, eps
        self.seen = []

    def after_backward(self, closure, state):
        w = self.model.embed.weight
        backup = w.detach().clone()
        r = self.eps * w.grad / w.grad.norm()
        with torch.no_grad():
            w.add_(r)
        self.perturbed = w.detach().clone()
        handle = self.model.embed.register_forward_hook(
            lambda m, a, out: self.seen.append(len(m._forward_hooks))
        )
        try:
            self.adv_loss = closure()
        finally:
            handle.remove()
            with torch.no_grad():
                w.copy_(backup)


@pytest.mark.parametrize(
    "make_trick, where",
    [
        (lambda: EmbeddingMixup(alpha=0.5, seed=2), "embed"),
        (lambda: ManifoldMixup("hidden", alpha=0.5, seed=2), "hidden"),
    ],
)
def test_mixup_composes_with_an_adversarial_closure(make_trick, where):
    torch.manual_seed(0)
    model = TinyTextClassifier()
    trick, probe = make_trick(), _AdversarialProbe(model)
    batch = _padded_batch()
    Tricks([probe, trick]).step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, loss_fn)
    ref_model = copy.deepcopy(model)
    with torch.no_grad():
        ref_model.embed.weight.copy_(probe.perturbed)
    expected = _tiny_reference_loss(ref_model, batch, trick.lam, trick.index, where)
    torch.testing.assert_close(probe.adv_loss, expected.detach(), atol=1e-6, rtol=0)
    if where == "embed":
        assert probe.seen == [2]  # the mixing hook was live inside the closure


def test_real_fgm_composes_if_available():
    adversarial = pytest.importorskip("danlu.adversarial")
    if not hasattr(adversarial, "FGM"):
        pytest.skip("danlu.adversarial.FGM not written yet")
    torch.manual_seed(0)
    model = TinyTextClassifier()
    trick = EmbeddingMixup(alpha=0.5, seed=2)
    fgm = adversarial.FGM(model, eps=0.5)
    probe_model = copy.deepcopy(model)
    probe = _AdversarialProbe(probe_model)
    batch = _padded_batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe_opt = torch.optim.SGD(probe_model.parameters(), lr=0.1)
    Tricks([EmbeddingMixup(alpha=0.5, seed=2), probe]).step(probe_model, probe_opt, batch, loss_fn)
    Tricks([trick, fgm]).step(model, opt, batch, loss_fn)
    for a, b in zip(model.parameters(), probe_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- HF BERT
def _tiny_bert():
    pytest.importorskip("transformers")
    return tiny_bert(0, vocab_size=60, num_hidden_layers=3, max_position_embeddings=32).eval()


def _hf_loss(model, batch):
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.cross_entropy(out.logits, batch["labels"]), out.logits


def test_embedding_mixup_on_hf_bert_matches_inputs_embeds():
    model = _tiny_bert()
    batch = _padded_batch()
    trick = EmbeddingMixup(alpha=0.5, seed=4)
    state = Tricks([trick]).step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batch, _hf_loss
    )
    lam, index = trick.lam, trick.index
    e = model.get_input_embeddings()(batch["input_ids"])
    mask = torch.maximum(batch["attention_mask"], batch["attention_mask"][index])
    logits = model(inputs_embeds=lam * e + (1 - lam) * e[index], attention_mask=mask).logits
    y = batch["labels"]
    ref = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[index])
    torch.testing.assert_close(state.loss, ref.detach(), atol=1e-5, rtol=0)


def _capture(module, store, pre=False):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.append(args[0].detach()))
    return module.register_forward_hook(lambda m, args, out: store.append(out.detach()))


def test_manifold_mixup_on_hf_bert_mixes_the_chosen_layer():
    model = _tiny_bert()
    batch = _padded_batch()
    layers = model.bert.encoder.layer
    out1, in2 = [], []
    _capture(layers[1], out1)  # registered before the mixing hook: sees the unmixed output
    _capture(layers[2], in2, pre=True)
    plain_logits = _hf_loss(model, batch)[1]
    trick = ManifoldMixup("bert.encoder.layer", alpha=0.5, choices=[1], seed=5)
    state = Tricks([trick]).step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batch, _hf_loss
    )
    assert trick.layer == 1
    torch.testing.assert_close(out1[1], out1[0])  # layers before the mix see clean inputs
    lam, index = trick.lam, trick.index
    torch.testing.assert_close(
        in2[1], lam * out1[0] + (1 - lam) * out1[0][index], atol=1e-6, rtol=0
    )
    assert not torch.allclose(state.logits, plain_logits)


def test_sentence_mixup_on_hf_bert_mixes_the_pooled_vector():
    model = _tiny_bert()
    batch = _padded_batch()
    pooled = []
    _capture(model.bert.pooler, pooled)
    _hf_loss(model, batch)
    trick = SentenceMixup("bert.pooler", alpha=0.5, seed=5)
    state = Tricks([trick]).step(
        model, torch.optim.SGD(model.parameters(), lr=0.0), batch, _hf_loss
    )
    lam, index = trick.lam, trick.index
    mixed = lam * pooled[0] + (1 - lam) * pooled[0][index]
    torch.testing.assert_close(state.logits, model.classifier(mixed).detach(), atol=1e-6, rtol=0)


def test_random_layer_choice_covers_the_choices():
    from danlu.core import State

    model = _tiny_bert()
    for trick, expected in [
        (ManifoldMixup("bert.encoder.layer", alpha=0.5, seed=0), {0, 1, 2}),
        (ManifoldMixup(list(model.bert.encoder.layer), choices=[0, 2]), {0, 2}),
    ]:
        picks = set()
        for _ in range(60):
            trick.on_batch(make_batch(), State(model=model))
            picks.add(trick.layer)
        assert picks == expected


def test_embedding_mixup_finds_the_input_embedding_module():
    model = TinyTextClassifier()
    assert EmbeddingMixup()._target(model) == (model.embed, "output")
    two = nn.ModuleDict({"a": nn.Embedding(5, 2), "b": nn.Embedding(9, 2)})
    assert EmbeddingMixup()._target(two)[0] is two["b"]
    with pytest.raises(ValueError, match=r"ambiguous.*'a' \(5, 2\), 'b' \(5, 2\)"):
        EmbeddingMixup()._target(
            nn.ModuleDict({"a": nn.Embedding(5, 2), "b": nn.Embedding(5, 2)})
        )
    with pytest.raises(ValueError, match="no nn.Embedding"):
        EmbeddingMixup()._target(nn.Linear(2, 2))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        sample_lambda(alpha)
    with pytest.raises(ValueError, match="alpha"):
        EmbeddingMixup(alpha=alpha)


def test_bad_inputs():
    with pytest.raises(TypeError, match="alpha"):
        sample_lambda(True)
    with pytest.raises(TypeError, match="generator"):
        sample_lambda(0.4, generator=np.random.RandomState(0))
    with pytest.raises(TypeError, match="EmbeddingMixup"):
        mixup_batch(torch.tensor([[1, 2]]), torch.tensor([0]), 0.4)
    with pytest.raises(ValueError, match="same batch size"):
        mixup_batch(torch.randn(3, 2), torch.tensor([0, 1]), 0.4)
    with pytest.raises(ValueError, match="lam must be in"):
        mixup_batch(torch.randn(2, 2), torch.tensor([0, 1]), 0.4, lam=1.5)
    with pytest.raises(ValueError, match="index must be an int64"):
        mixup_batch(torch.randn(2, 2), torch.tensor([0, 1]), 0.4, index=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        soft_cross_entropy(torch.randn(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="reduction='none'"):
        mixup_cross_entropy(
            torch.randn(2, 3),
            torch.tensor([0, 1]),
            torch.tensor([1, 0]),
            torch.tensor([0.5, 0.5]),
            loss_from_logits=F.cross_entropy,
        )
    with pytest.raises(ValueError, match="where"):
        SentenceMixup("head", where="middle")
    with (
        pytest.raises(ValueError, match="where"),
        mixing(nn.Linear(2, 2), 0.5, torch.tensor([0]), where="x"),
    ):
        pass


def test_bad_use_inside_tricks():
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="no labels under 'labels'"):
        Tricks([EmbeddingMixup()]).step(
            model, opt, {"input_ids": make_batch()["input_ids"]}, loss_fn
        )
    with pytest.raises(ValueError, match=r"return \(loss, logits\)"):
        Tricks([EmbeddingMixup()]).step(model, opt, make_batch(), lambda m, b: loss_fn(m, b)[0])
    with pytest.raises(ValueError, match="no submodule 'encoder.nope'"):
        Tricks([ManifoldMixup("encoder.nope")]).step(model, opt, make_batch(), loss_fn)
    with pytest.raises(ValueError, match="did not run in the forward pass"):
        model.unused = nn.Linear(16, 16)
        Tricks([SentenceMixup("unused")]).step(model, opt, make_batch(), loss_fn)
    del model.unused
    with pytest.raises(ValueError, match="choices holds layer 5"):
        Tricks([ManifoldMixup([model.hidden], choices=[5])]).step(model, opt, make_batch(), loss_fn)
    with pytest.raises(ValueError, match="no nn.Embedding"):
        lin = nn.Linear(4, 3)
        Tricks([EmbeddingMixup()]).step(
            lin,
            torch.optim.SGD(lin.parameters(), lr=0.1),
            {"x": torch.randn(2, 4), "labels": torch.tensor([0, 1])},
            lambda m, b: (F.cross_entropy(m(b["x"]), b["labels"]), m(b["x"])),
        )

    # tuple batches work with target_fn
    def tuple_loss(m, b):
        logits = m(b[0])
        return F.cross_entropy(logits, b[1]), logits

    tup = (make_batch()["input_ids"], make_batch()["labels"])
    state = Tricks([EmbeddingMixup(target_fn=lambda b: b[1])]).step(model, opt, tup, tuple_loss)
    assert torch.isfinite(state.loss)


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, world, out_dir):
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(TinyTextClassifier())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tricks = Tricks([EmbeddingMixup(alpha=0.5, seed=9)])
    for step in range(3):
        tricks.step(model, opt, make_batch(n=4, seed=10 * step + rank), loss_fn)
    torch.save(model.module.state_dict(), f"{out_dir}/rank{rank}.pt")


def test_embedding_mixup_under_ddp_matches_a_single_process_reference(tmp_path):
    from helpers import run_ddp

    from danlu.data.mixup import sample_lambda, sample_permutation

    run_ddp(_ddp_worker, str(tmp_path))
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(9)  # every rank's trick draws the same lam / index
    for step in range(3):
        lam, index = sample_lambda(0.5, g), sample_permutation(4, g)
        losses = []
        for rank in range(2):
            b = make_batch(n=4, seed=10 * step + rank)
            losses.append(_tiny_reference_loss(ref, b, lam, index, "embed"))
        (sum(losses) / 2).backward()
        opt.step()
        opt.zero_grad()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for k, v in ref.state_dict().items():
            torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0, msg=k)
