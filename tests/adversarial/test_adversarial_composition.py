"""FGM composed with embedding Mixup and R-Drop inside Tricks, against hand-written loops."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from _adversarial_models import TextbookFGM, batch, loss_fn, make
from helpers import TinyTextClassifier, assert_params_close

from danlu import Tricks
from danlu.adversarial import FGM
from danlu.data.mixup import EmbeddingMixup
from danlu.loss.rdrop import RDrop


def test_mixup_then_fgm_attacks_the_mixed_batch():
    model, _ = make("gru")
    ref = copy.deepcopy(model)
    mix = EmbeddingMixup(alpha=0.4, seed=3)
    tricks = Tricks([FGM(model, eps=0.5), mix])  # list order does not matter: Mixup first
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    tb = TextbookFGM(ref, "emb", eps=0.5)
    for i in range(3):
        b = batch(seed=i)
        tricks.step(model, opt, b, loss_fn)
        lam, index = mix.lam, mix.index  # what the trick drew for this batch
        hook = ref.emb.register_forward_hook(
            lambda m, a, out, lam=lam, index=index: lam * out + (1 - lam) * out[index]
        )

        def mixed_loss(b=b, lam=lam, index=index):
            logits = ref(b["input_ids"])
            y = b["labels"]
            return lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[index])

        mixed_loss().backward()
        tb.attack()
        mixed_loss().backward()
        tb.restore()
        hook.remove()
        ref_opt.step()
        ref_opt.zero_grad()
    assert_params_close(model, ref, atol=1e-8)  # mixup alone agrees to ~5e-10 in fp64


def _sym_kl(a, b):
    la, lb = F.log_softmax(a, -1), F.log_softmax(b, -1)
    kl_ab = F.kl_div(lb, la, log_target=True, reduction="batchmean")
    kl_ba = F.kl_div(la, lb, log_target=True, reduction="batchmean")
    return 0.5 * (kl_ab + kl_ba)


def test_fgm_runs_rdrop_inside_the_adversarial_closure():
    torch.manual_seed(0)
    model = TinyTextClassifier(vocab=100, dropout=0.2).double()
    ref = copy.deepcopy(model)
    tricks = Tricks([FGM(model, eps=0.5), RDrop(alpha=2.0)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    tb = TextbookFGM(ref, "embed", eps=0.5)

    def rdrop_loss(b):
        l1, z1 = loss_fn(ref, b)
        l2, z2 = loss_fn(ref, b)
        return 0.5 * (l1 + l2) + 2.0 * _sym_kl(z1, z2)

    for i in range(3):
        b = batch(seed=i)
        torch.manual_seed(100 + i)
        tricks.step(model, opt, b, loss_fn)
        torch.manual_seed(100 + i)  # the same dropout masks, in the same order
        rdrop_loss(b).backward()
        tb.attack()
        rdrop_loss(b).backward()
        tb.restore()
        ref_opt.step()
        ref_opt.zero_grad()
    assert_params_close(model, ref, atol=1e-10)


def test_mixup_fgm_rdrop_together_train_and_restore():
    torch.manual_seed(0)
    model = TinyTextClassifier(vocab=100, dropout=0.1)
    fgm = FGM(model, eps=0.5)
    tricks = Tricks([EmbeddingMixup(alpha=0.4), fgm, RDrop(alpha=1.0)], accumulate=2)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)
    before = copy.deepcopy(model.state_dict())
    for i in range(4):
        state = tricks.step(model, frozen, batch(seed=i), loss_fn)
        assert torch.isfinite(state.loss) and not fgm.attacked
    for k, v in model.state_dict().items():  # lr 0: every perturbation was undone exactly
        assert torch.equal(v, before[k]), k
