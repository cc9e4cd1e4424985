"""Integrations with training frameworks; each needs its optional extra.

- :mod:`danlu.integrations.transformers` (``pip install 'danlu[hf]'``): ``DanluTrainer`` /
  ``TricksMixin`` for ``transformers.Trainer`` and the step-level ``TricksCallback``.
- :mod:`danlu.integrations.lightning` (``pip install 'danlu[lightning]'``): ``DanluCallback``
  and the manual-optimisation helper ``adversarial_step``.

Importing this package imports neither framework: import the submodule you need.
"""
