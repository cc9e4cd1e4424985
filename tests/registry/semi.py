"""Semi-supervised and noise tricks (danlu.semi, VAT, embedding noise) and Delayed."""

import torch
from helpers import make_batch

from danlu import Delayed
from danlu.adversarial import FGM, VAT, GaussianNoise, NEFTune
from danlu.semi import UDA, FixMatch, Unlabelled


def _unlabelled(pairs: bool):
    out = []
    for i in range(3):
        b = make_batch(seed=100 + i)
        u = {"input_ids": b["input_ids"]}
        out.append((u, {"input_ids": b["input_ids"].roll(1, dims=1)}) if pairs else u)
    return out


def _logits(model, batch):
    return model(batch["input_ids"])


FACTORIES = {
    "Unlabelled": lambda model, opt: Unlabelled(_unlabelled(False)),
    "UDA": lambda model, opt: UDA(_unlabelled(True), threshold=0.3, logits_fn=_logits),
    "UDA-tsa": lambda model, opt: UDA(
        _unlabelled(True), tsa="exp", total_steps=10, num_classes=3, logits_fn=_logits
    ),
    "FixMatch": lambda model, opt: FixMatch(_unlabelled(True), threshold=0.3, logits_fn=_logits),
    "VAT": lambda model, opt: VAT(model, eps=0.5, logits_fn=_logits),
    "VAT-unlabelled": lambda model, opt: VAT(
        model, _unlabelled(False), eps=0.5, logits_fn=_logits,
        generator=torch.Generator().manual_seed(0),
    ),
    "GaussianNoise": lambda model, opt: GaussianNoise(model, std=0.05),
    "NEFTune": lambda model, opt: NEFTune(model, alpha=5.0),
    "Delayed-FGM": lambda model, opt: Delayed(FGM(model, eps=0.5), start_step=1),
}
