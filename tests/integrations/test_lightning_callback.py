"""danlu.integrations.lightning: DanluCallback (automatic optimisation) and manual_step
(manual optimisation) against ``danlu.Tricks`` in a hand-written loop on the same batches."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch

import danlu
from danlu.adversarial import FGM
from danlu.optim import EMA, ClipGradNorm

L = pytest.importorskip(
    "lightning.pytorch", reason="lightning is not installed (extra 'lightning'): untested"
)
from danlu.integrations.lightning import DanluCallback, manual_step  # noqa: E402

LR = 0.5
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),
    pytest.mark.filterwarnings("ignore:.*no `val_dataloader`"),
]


def net_loss(module, batch):
    return loss_fn(module.net, batch)


class Classifier(L.LightningModule):
    def __init__(self, net: torch.nn.Module, manual: bool = False) -> None:
        super().__init__()
        self.net = net
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        if self.automatic_optimization:
            return net_loss(self, batch)[0]
        manual_step(self, batch, net_loss)

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", net_loss(self, batch)[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def loader(batch: dict, size: int):
    rows = [{k: v[i] for k, v in batch.items()} for i in range(batch["labels"].shape[0])]
    return torch.utils.data.DataLoader(rows, batch_size=size, shuffle=False)


def fit(module, data, callback, steps: int, **kw) -> None:
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback], **kw,
    )
    trainer.fit(module, data)


def custom_loop(net, batches, tricks, accumulate=1):
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    runner = danlu.Tricks(tricks, accumulate=accumulate)
    for b in batches:
        runner.step(net, opt, b, loss_fn)
    return runner


def chunks(batch: dict, size: int) -> list[dict]:
    n = batch["labels"].shape[0]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def test_ema_callback_equals_custom_loop_ema():
    batch = make_batch(n=12, seed=1)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    ema = EMA(net, decay=0.6)
    callback = DanluCallback([ClipGradNorm(0.05), ema])
    fit(Classifier(net), loader(batch, 4), callback, steps=3)
    ref_ema = EMA(ref, decay=0.6)
    custom_loop(ref, chunks(batch, 4), [ClipGradNorm(0.05), ref_ema])
    assert ema.num_updates == 3 and callback.tricks.state.step == 3
    assert_params_close(net, ref, atol=1e-6)
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, ref_ema.shadow[name], atol=1e-6, rtol=0)
    assert callback.state_dict()["step"] == 3


def test_ema_callback_under_lightning_accumulation():
    batch = make_batch(n=12, seed=2)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    ema = EMA(net, decay=0.6)
    callback = DanluCallback([ema])
    fit(Classifier(net), loader(batch, 2), callback, steps=3, accumulate_grad_batches=2)
    ref_ema = EMA(ref, decay=0.6)
    custom_loop(ref, chunks(batch, 2), [ref_ema], accumulate=2)
    assert ema.num_updates == 3 and callback.tricks.state.micro_step == 6
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, ref_ema.shadow[name], atol=1e-6, rtol=0)


def test_manual_fgm_equals_custom_loop_fgm():
    batch = make_batch(n=8, seed=3)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref, plain = copy.deepcopy(net), copy.deepcopy(net)
    callback = DanluCallback([FGM(net, eps=1.0)])
    fit(Classifier(net, manual=True), loader(batch, 8), callback, steps=1)
    custom_loop(ref, [batch], [FGM(ref, eps=1.0)])
    assert_params_close(net, ref, atol=1e-6)
    custom_loop(plain, [batch], [])
    assert (net.head.weight - plain.head.weight).abs().max() > 1e-4


def test_manual_fgm_ema_with_accumulation_equals_custom_loop():
    batch = make_batch(n=8, seed=4)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    ema = EMA(net, decay=0.5)
    callback = DanluCallback(danlu.Tricks([FGM(net), ema], accumulate=2))
    fit(Classifier(net, manual=True), loader(batch, 2), callback, steps=2)
    ref_ema = EMA(ref, decay=0.5)
    custom_loop(ref, chunks(batch, 2), [FGM(ref), ref_ema], accumulate=2)
    assert_params_close(net, ref, atol=1e-6)
    assert ema.num_updates == ref_ema.num_updates == 2
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, ref_ema.shadow[name], atol=1e-6, rtol=0)


def test_manual_step_flushes_the_epochs_partial_window():
    """5 batches an epoch with accumulate=4: manual_step steps after batches 4 and 5 of each
    epoch (the last window is the mean over its 1 batch), as Tricks does with
    boundary=True on the epoch's last batch; no gradient carries into the next epoch."""
    batch = make_batch(n=10, seed=7)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    callback = DanluCallback(danlu.Tricks([], accumulate=4))
    fit(Classifier(net, manual=True), loader(batch, 2), callback, steps=-1, max_epochs=2)
    assert callback.tricks.state.step == 4
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    runner = danlu.Tricks(accumulate=4)
    for _ in range(2):
        for i, b in enumerate(chunks(batch, 2)):
            runner.step(ref, opt, b, loss_fn, boundary=True if i == 4 else None)
    assert_params_close(net, ref, atol=1e-6)


def test_backward_tricks_need_manual_optimisation():
    torch.manual_seed(0)
    net = TinyTextClassifier()
    with pytest.raises(ValueError, match="manual_step"):
        fit(Classifier(net), loader(make_batch(n=4), 4), DanluCallback([FGM(net)]), steps=1)
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        fit(Classifier(net), loader(make_batch(n=4), 4),
            DanluCallback(danlu.Tricks([], accumulate=2)), steps=1)
    with pytest.raises(ValueError, match="precision"):
        DanluCallback(danlu.Tricks([], amp="bf16"))


class _Scaler:
    def __init__(self, scale: float) -> None:
        self.scale = scale

    def get_scale(self) -> float:
        return self.scale


class _Trainer:
    """What the callback reads from Lightning's Trainer around an fp16 step."""

    def __init__(self, scaler) -> None:
        self.precision_plugin = type("P", (), {"scaler": scaler})()
        self.global_step = 0


def test_step_skipped_by_grad_scaler_runs_no_after_step():
    torch.manual_seed(0)
    ema = EMA(TinyTextClassifier(), decay=0.5)
    callback = DanluCallback([ema])
    scaler = _Scaler(1024.0)
    trainer = _Trainer(scaler)
    callback.on_before_optimizer_step(trainer, None, torch.optim.SGD([torch.zeros(1)], lr=1))
    scaler.scale, trainer.global_step = 512.0, 1  # scaler.update() halved it: inf grads
    callback.on_train_batch_end(trainer, None, None, None, 0)
    assert ema.num_updates == 0 and callback.tricks.state.step == 0
    callback.on_before_optimizer_step(trainer, None, torch.optim.SGD([torch.zeros(1)], lr=1))
    trainer.global_step = 2
    callback.on_train_batch_end(trainer, None, None, None, 1)
    assert ema.num_updates == 1 and callback.tricks.state.step == 1


def test_validation_runs_with_the_averaged_weights():
    batch, dev = make_batch(n=12, seed=5), make_batch(n=6, seed=6)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ema = EMA(net, decay=0.5)
    callback = DanluCallback([ema], average=ema)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[callback],
    )
    module = Classifier(net)
    trainer.fit(module, loader(batch, 4))
    live = {k: v.clone() for k, v in net.state_dict().items()}
    (metrics,) = trainer.validate(module, loader(dev, 6), verbose=False)
    with ema.averaged(), torch.no_grad():
        expected = loss_fn(net, dev)[0].item()
    with torch.no_grad():
        assert abs(loss_fn(net, dev)[0].item() - expected) > 1e-4  # EMA differs from live
    assert metrics["val_loss"] == pytest.approx(expected, abs=1e-6)
    for k, v in net.state_dict().items():  # live weights restored bit for bit
        assert torch.equal(v, live[k])


def test_manual_fgm_under_bf16_matches_custom_loop_bf16():
    batch = make_batch(n=8, seed=7)
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    callback = DanluCallback([FGM(net, eps=1.0)])
    fit(Classifier(net, manual=True), loader(batch, 8), callback, steps=1,
        precision="bf16-mixed")
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    danlu.Tricks([FGM(ref, eps=1.0)], amp="bf16").step(ref, opt, batch, loss_fn)
    assert_params_close(net, ref, atol=1e-6)
