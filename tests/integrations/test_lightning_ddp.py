"""manual_step under Lightning's 2-process CPU DDP (``ddp_spawn``, gloo): one FGM step on
4 + 4 examples equals the custom loop on the batch of 8."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch

import danlu
from danlu.adversarial import FGM

L = pytest.importorskip(
    "lightning.pytorch", reason="lightning is not installed (extra 'lightning'): untested"
)
from danlu.integrations.lightning import DanluCallback, manual_step  # noqa: E402

LR = 0.5
pytestmark = pytest.mark.filterwarnings("ignore")  # spawn / worker-count chatter


def _net_loss(module, batch):
    return loss_fn(module.net, batch)


class ManualClassifier(L.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.automatic_optimization = net, False

    def training_step(self, batch, batch_idx):
        manual_step(self, batch, _net_loss)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR)


def test_manual_fgm_under_ddp_equals_one_process():
    batch = make_batch(n=8, seed=3)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(8)]
    torch.manual_seed(0)
    net = TinyTextClassifier()
    ref = copy.deepcopy(net)
    module = ManualClassifier(net)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[DanluCallback([FGM(net, eps=1.0)])],
    )
    # Lightning shards the loader with a DistributedSampler: rows 0,2,4,6 and 1,3,5,7
    trainer.fit(module, torch.utils.data.DataLoader(rows, batch_size=4, shuffle=False))
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    danlu.Tricks([FGM(ref, eps=1.0)]).step(ref, opt, batch, loss_fn)
    assert_params_close(module.net, ref, atol=1e-6)  # rank 0's weights, sent back by spawn
