"""The docstring examples of danlu.predict and danlu.microbatch run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    ["danlu.predict.tta", "danlu.predict.inference", "danlu.predict.snapshot",
     "danlu.predict.blend", "danlu.microbatch"],
)  # fmt: skip
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
