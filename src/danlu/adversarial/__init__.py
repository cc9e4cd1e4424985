"""Adversarial training: FGM, PGD, FreeLB, AWP, attention-weight noise, Gaussian / NEFTune
embedding noise and VAT.

Every class is a drop-in object for a hand-written loop and a :class:`danlu.Trick` for
``danlu.Tricks``; embedding attacks find the input embedding with :func:`find_embedding`.
"""

from danlu._embeddings import find_embedding
from danlu.adversarial.attention_noise import AttentionNoise, attention_modules
from danlu.adversarial.awp import AWP, awp_select
from danlu.adversarial.fgm import FGM, fgm_delta, grad_rows
from danlu.adversarial.freelb import FreeLB, freelb_ascent, freelb_init
from danlu.adversarial.noise import GaussianNoise, NEFTune, gaussian_noise, neftune_noise
from danlu.adversarial.pgd import PGD, project_rows
from danlu.adversarial.vat import VAT, normalize_per_example, vat_direction

__all__ = [
    "find_embedding",
    "FGM",
    "fgm_delta",
    "grad_rows",
    "PGD",
    "project_rows",
    "FreeLB",
    "freelb_init",
    "freelb_ascent",
    "AWP",
    "awp_select",
    "AttentionNoise",
    "attention_modules",
    "GaussianNoise",
    "gaussian_noise",
    "NEFTune",
    "neftune_noise",
    "VAT",
    "vat_direction",
    "normalize_per_example",
]
