"""layer_decay_groups through the peft wrapper: each LoRA A/B matrix gets the lr scale of
the layer it adapts, the trainable head gets the full lr, the frozen base is in no group."""

from __future__ import annotations

import re

import pytest

from danlu.optim import layer_decay_groups

pytest.importorskip("peft", reason="peft is not installed (extra 'peft')")
pytest.importorskip("transformers", reason="transformers is not installed (extra 'hf')")
from _peft_models import lora_model, trainable  # noqa: E402

LAYER = {"bert": r"\.encoder\.layer\.(\d+)\.", "gpt2": r"\.transformer\.h\.(\d+)\."}


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_lora_matrices_get_their_layers_scale(arch):
    model = lora_model(arch)
    groups = layer_decay_groups(model, lr=1.0, decay=0.5, weight_decay=0.0)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert set(scale) == set(trainable(model))  # every trainable parameter once, no frozen one
    loras = [n for n in scale if "lora_" in n]
    assert len(loras) == {"bert": 8, "gpt2": 4}[arch]  # A, B x targets x 2 layers
    for name in loras:  # layer i has depth i + 1 of top 3: scale 0.5 ** (2 - i)
        i = int(re.search(LAYER[arch], name).group(1))
        assert scale[name] == 0.5 ** (2 - i), name
    heads = [n for n in scale if "lora_" not in n]
    assert heads and all(scale[n] == 1.0 for n in heads), heads  # classifier / score head
