"""Domain-adaptive MLM: one epoch on a tiny BertForMaskedLM lowers its MLM loss on the same
texts (measured with fixed token-level masks before and after; trained with whole-word
masks), the checkpoint loads into a sequence classifier with the trained encoder, and the
checks."""

from __future__ import annotations

import pytest
import torch
from _zh import SENTENCES, char_tokenizer

from danlu.pretrain import domain_adaptive_mlm, mlm_collator, mlm_features

transformers = pytest.importorskip("transformers")


def _tiny_mlm(tok, seed=0):
    cfg = transformers.BertConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertForMaskedLM(cfg)


def _fixed_mask_loss(model, tok, texts):
    """The MLM loss under masks drawn once with a fixed seed (the same before and after)."""
    batch = dict(mlm_collator(tok, 0.3, seed=123)(mlm_features(tok, texts)))
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_one_epoch_lowers_the_mlm_loss_and_loads_into_a_classifier(tmp_path):
    tok = char_tokenizer(tmp_path)
    model = _tiny_mlm(tok)
    texts = SENTENCES * 16
    before = _fixed_mask_loss(model, tok, texts)
    out = tmp_path / "dapt"
    summary = domain_adaptive_mlm(
        model, tok, texts, out, epochs=1, lr=2e-2, batch_size=16, whole_word=True
    )
    after = _fixed_mask_loss(model, tok, texts)
    assert summary.steps == 8 and len(summary.epoch_losses) == 1
    assert after < before - 0.1, (before, after)  # measured: 4.33 -> 4.17
    assert model.training is False  # _fixed_mask_loss left it in eval; the helper restored train
    clf = transformers.BertForSequenceClassification.from_pretrained(out, num_labels=2)
    for name, p in clf.bert.encoder.named_parameters():
        torch.testing.assert_close(p, model.bert.encoder.get_parameter(name), rtol=0, atol=0)
    assert transformers.AutoTokenizer.from_pretrained(out).vocab == tok.vocab


def test_checks_and_the_many_epochs_warning(tmp_path):
    tok = char_tokenizer(tmp_path)
    model = _tiny_mlm(tok)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        domain_adaptive_mlm(model, tok, SENTENCES, tmp_path / "x", epochs=0)
    with pytest.raises(ValueError, match="batch_size must be"):
        domain_adaptive_mlm(model, tok, SENTENCES, tmp_path / "x", batch_size=0)
    with pytest.raises(TypeError, match="tricks must be"):
        domain_adaptive_mlm(model, tok, SENTENCES, tmp_path / "x", tricks=[])
    # the warning comes first (the bad batch_size then stops the run before any training)
    with (
        pytest.warns(UserWarning, match="overwrite what the general pretraining learned"),
        pytest.raises(ValueError, match="batch_size"),
    ):
        domain_adaptive_mlm(model, tok, SENTENCES, tmp_path / "x", epochs=4, batch_size=0)
