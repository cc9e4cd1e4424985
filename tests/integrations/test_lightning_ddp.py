"""manual_step under Lightning's 2-process CPU DDP (gloo): one FGM step on 4 + 4 examples
equals the custom loop on the batch of 8.

The two processes come from ``helpers.run_ddp`` (which owns the process group and destroys
it cleanly) and present themselves to Lightning as a torchelastic launch, so Lightning's
``ddp`` strategy joins the existing group instead of spawning its own processes. Lightning's
own ``ddp_spawn`` launcher occasionally aborts a worker at interpreter exit ("terminate called
without an active exception") because it never destroys its gloo group."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from helpers import TinyTextClassifier, assert_params_close, loss_fn, make_batch, run_ddp

import danlu
from danlu.adversarial import FGM

L = pytest.importorskip(
    "lightning.pytorch", reason="lightning is not installed (extra 'lightning'): untested"
)
from danlu.integrations.lightning import DanluCallback, manual_step  # noqa: E402

LR = 0.5
pytestmark = pytest.mark.filterwarnings("ignore")  # worker-count chatter


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


def _rows():
    batch = make_batch(n=8, seed=3)
    return batch, [{k: v[i] for k, v in batch.items()} for i in range(8)]


def _fit_on_rank(rank: int, world: int, out: str) -> None:
    os.environ.update(
        TORCHELASTIC_RUN_ID="danlu-test", RANK=str(rank), LOCAL_RANK=str(rank),
        GROUP_RANK="0", WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
    )  # fmt: skip
    torch.manual_seed(0)
    net = TinyTextClassifier()
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", devices=world, strategy="ddp", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[DanluCallback([FGM(net, eps=1.0)])],
    )  # fmt: skip
    # Lightning shards the loader with a DistributedSampler: rows 0,2,4,6 and 1,3,5,7
    loader = torch.utils.data.DataLoader(_rows()[1], batch_size=4, shuffle=False)
    trainer.fit(ManualClassifier(net), loader)
    torch.save(net.state_dict(), os.path.join(out, f"rank{rank}.pt"))


def test_manual_fgm_under_ddp_equals_one_process(tmp_path):
    run_ddp(_fit_on_rank, str(tmp_path))
    torch.manual_seed(0)
    ref = TinyTextClassifier()
    opt = torch.optim.SGD(ref.parameters(), lr=LR)
    danlu.Tricks([FGM(ref, eps=1.0)]).step(ref, opt, _rows()[0], loss_fn)
    for rank in range(2):
        got = copy.deepcopy(ref)
        got.load_state_dict(torch.load(tmp_path / f"rank{rank}.pt"))
        assert_params_close(got, ref, atol=1e-6)
