"""The hook mode of FGM/PGD on a plain module (no peft needed): the recorded gradient is the
embedding output's gradient of the last backward (summed over the forwards of one backward,
as in R-Drop), the perturbation is ``eps · g/‖g‖`` on the output, and the errors."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyTextClassifier, loss_fn, make_batch

from danlu.adversarial import FGM, PGD


def _capture(module):
    """Forward outputs seen after FGM's hook, with their gradients retained (torch's own
    ``retain_grad``, the reference)."""
    seen = []

    def hook(mod, args, out):
        if out.requires_grad:  # grad-enabled forwards only
            out.retain_grad()
            seen.append(out)

    return seen, module.register_forward_hook(hook)


def test_recorded_gradient_is_the_outputs_gradient_of_the_last_backward():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    model.embed.requires_grad_(False)
    fgm = FGM(model, eps=0.3, mode="hook")
    seen, handle = _capture(model.embed)
    a, b = make_batch(seed=1), make_batch(seed=2)
    (loss_fn(model, a)[0] + loss_fn(model, a)[0]).backward()  # two forwards, one backward
    torch.testing.assert_close(fgm._output.grad, seen[0].grad + seen[1].grad, atol=0, rtol=0)
    with torch.no_grad():
        model(b["input_ids"])  # evaluation records and clears nothing
    assert fgm._output.grad is not None
    loss_fn(model, b)[0].backward()  # the next batch replaces it
    torch.testing.assert_close(fgm._output.grad, seen[2].grad, atol=0, rtol=0)
    g = seen[2].grad
    clean_out = seen[2].detach().clone()
    assert fgm.attack() and fgm.attacked
    loss_fn(model, b)[0].backward()
    torch.testing.assert_close(seen[3].detach(), clean_out + 0.3 * g / g.norm(), atol=1e-6,
                               rtol=0)  # fmt: skip
    fgm.restore()
    assert not fgm.attacked and not fgm.attack()  # the adversarial gradient was consumed
    handle.remove()
    fgm.remove()
    assert not model.embed._forward_hooks  # nothing left on the model


def test_hook_mode_errors():
    model = TinyTextClassifier()
    with pytest.raises(ValueError, match="mode must be 'weight'.*or 'hook'"):
        FGM(model, mode="output")
    with pytest.raises(ValueError, match="mode must be"):
        PGD(model, mode="rows")
    fgm = FGM(model, eps=0.3, mode="hook")
    loss_fn(model, make_batch(seed=1))[0].backward()
    assert fgm.attack()
    with pytest.raises(RuntimeError, match="called twice"):
        fgm.attack()
    with pytest.raises(ValueError, match="run the same batch"):
        loss_fn(model, make_batch(n=4, seed=2))  # another batch shape while attacked
    fgm.restore()
    pgd = PGD(model, mode="hook")
    with pytest.raises(RuntimeError, match="before attack"):
        pgd.attack()
    assert "mode='hook'" in repr(fgm) and "mode='hook'" in repr(pgd)
