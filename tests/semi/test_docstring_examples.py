"""The runnable docstring examples of the semi-supervised, noise, VAT and Delayed code (the
class examples that need a user's model and loader are illustrations, not run)."""

from __future__ import annotations

import doctest
import importlib

import pytest

FUNCTIONS = [
    ("danlu.semi.unlabelled", ["UnlabelledStream", "text_views"]),
    ("danlu.semi.uda", ["uda_loss", "tsa_threshold", "tsa_cross_entropy"]),
    ("danlu.semi.fixmatch", ["fixmatch_loss"]),
    ("danlu.semi.pseudo", ["select_pseudo_labels", "pseudo_dataset", "pseudo_label_round"]),
    ("danlu.adversarial.vat", ["normalize_per_example", "vat_direction"]),
    ("danlu.adversarial.noise", ["gaussian_noise", "neftune_noise"]),
    ("danlu.delayed", ["Delayed"]),
    ("danlu._embeddings", ["output_hook"]),
]


@pytest.mark.parametrize("module, names", FUNCTIONS)
def test_docstring_examples(module, names):
    mod = importlib.import_module(module)
    finder, runner = doctest.DocTestFinder(recurse=False), doctest.DocTestRunner()
    attempted = 0
    for name in names:
        for test in finder.find(getattr(mod, name), name, module=mod, globs=vars(mod).copy()):
            result = runner.run(test)
            assert result.failed == 0, (module, name)
            attempted += result.attempted
    assert attempted >= len(names)
