"""Adversarial training tricks."""

import torch

from danlu.adversarial import AWP, FGM, PGD, FreeLB

FACTORIES = {
    "FGM": lambda model, opt: FGM(model, eps=0.5),
    "PGD": lambda model, opt: PGD(model, eps=0.5, alpha=0.2, steps=2),
    "FGM-hook": lambda model, opt: FGM(model, eps=0.5, mode="hook"),
    "PGD-hook": lambda model, opt: PGD(model, eps=0.5, alpha=0.2, steps=2, mode="hook"),
    "FreeLB": lambda model, opt: FreeLB(
        model, steps=2, alpha=0.1, init_mag=0.1, generator=torch.Generator().manual_seed(0)
    ),
    "AWP": lambda model, opt: AWP(model, adv_lr=0.5, adv_eps=0.01, start_step=1),
}
