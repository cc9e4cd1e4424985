"""Adversarial training tricks."""

from danlu.adversarial import FGM, PGD

FACTORIES = {
    "FGM": lambda model, opt: FGM(model, eps=0.5),
    "PGD": lambda model, opt: PGD(model, eps=0.5, alpha=0.2, steps=2),
}
