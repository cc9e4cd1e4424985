"""danlu.predict.tta: identity views equal plain prediction; the mean of k views against a
hand loop; text views from an augmenter; token dropout; the labelled-split report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyTextClassifier

from danlu.data.augment import example_rng
from danlu.data.eda import EDA
from danlu.kfold import softmax
from danlu.predict import TTA, TokenDropout, text_views, token_dropout, tta_predict


class Identity:
    def augment(self, text, rng):
        return [text]


def _text_model():
    """A deterministic 3-class 'model' on texts: logits from character counts."""

    def predict_fn(texts):
        return np.array([[len(t) / 5, t.count("a") - 1.0, t.count(" ") / 2] for t in texts])

    return predict_fn


TEXTS = ["a fine film indeed", "bad", "a truly awful and boring movie", "good acting but slow"]


@pytest.mark.parametrize("method", ["mean_probs", "mean_logits"])
def test_identity_augmenter_equals_plain_prediction(method):
    predict_fn = _text_model()
    got = TTA(Identity(), n_views=4, method=method)(predict_fn, TEXTS)
    plain = predict_fn(TEXTS)
    np.testing.assert_allclose(got, softmax(plain) if method == "mean_probs" else plain, atol=1e-12)


def test_mean_of_k_views_against_a_hand_loop():
    predict_fn = _text_model()
    eda = EDA(alpha_sr=0, alpha_ri=0, alpha_rs=0.2, p_rd=0.2, n_aug=3, lang="en")
    tta = TTA(eda, n_views=3, seed=7)
    probs, logits = [softmax(predict_fn(TEXTS))], [predict_fn(TEXTS)]
    for k in range(3):
        view = []
        for i, t in enumerate(TEXTS):  # the k-th new version of each text, its own rng
            new = eda.augment(t, example_rng(7, i))
            view.append(new[k] if k < len(new) else t)
        probs.append(softmax(predict_fn(view)))
        logits.append(predict_fn(view))
    np.testing.assert_allclose(tta(predict_fn, TEXTS), np.mean(probs, 0), atol=1e-12)
    tta.method = "mean_logits"
    np.testing.assert_allclose(tta(predict_fn, TEXTS), np.mean(logits, 0), atol=1e-12)
    assert len(tta.views(TEXTS)) == 4 and tta.views(TEXTS)[0] == TEXTS
    assert any(v != TEXTS for v in tta.views(TEXTS)[1:])  # EDA changed something


def test_text_views_fall_back_to_the_original():
    class Two:
        def augment(self, text, rng):
            return [text + "!", text + "?"] if len(text) > 1 else []

    assert text_views(["ab", "c"], Two(), 3) == [["ab!", "c"], ["ab?", "c"], ["ab", "c"]]


def test_token_dropout_keeps_special_ids_and_matches_the_rate():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 100, (64, 50), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    out = token_dropout(ids, 0.25, mask_id=103, generator=g, keep_ids=[101, 102])
    assert torch.equal(out[:, [0, -1]], ids[:, [0, -1]])
    changed = (out != ids)[:, 1:-1]
    assert torch.equal(out[:, 1:-1][changed], torch.full_like(out[:, 1:-1][changed], 103))
    assert abs(changed.float().mean().item() - 0.25) < 0.02
    assert torch.equal(token_dropout(ids, 0.0, 103), ids)
    assert ids[0, 0] == 101  # input not mutated


def test_token_dropout_tta_on_a_model_against_a_hand_loop():
    torch.manual_seed(0)
    model = TinyTextClassifier().eval()
    batch = {"input_ids": torch.randint(1, 50, (6, 8)), "attention_mask": torch.ones(6, 8)}
    predict_fn = lambda b: model(b["input_ids"], b["attention_mask"]).detach()  # noqa: E731
    view = TokenDropout(0.3, mask_id=0)
    tta = TTA(view, n_views=2, keep_original=False, seed=3)
    views = tta.views(batch)
    expected = np.mean([softmax(predict_fn(v).double().numpy()) for v in views], 0)
    np.testing.assert_allclose(tta(predict_fn, batch), expected, atol=1e-6)
    assert not torch.equal(views[0]["input_ids"], views[1]["input_ids"])
    assert torch.equal(tta.views(batch)[1]["input_ids"], views[1]["input_ids"])  # seeded


def test_evaluate_reports_plain_and_tta():
    predict_fn = _text_model()
    labels = np.array([0, 0, 1, 2])
    report = TTA(Identity(), n_views=2).evaluate(predict_fn, TEXTS, labels)
    plain = float((predict_fn(TEXTS).argmax(1) == labels).mean())
    assert report.plain == report.tta == plain and report.delta == 0.0
    assert report.plain_seconds >= 0 and report.tta_seconds >= 0


def test_tta_predict_and_errors():
    with pytest.raises(ValueError, match="views is empty"):
        tta_predict(_text_model(), [])
    with pytest.raises(ValueError, match="different shapes"):
        tta_predict(_text_model(), [TEXTS, TEXTS[:2]])
    with pytest.raises(ValueError, match="n_views"):
        TTA(Identity(), n_views=0)
    with pytest.raises(ValueError, match="method"):
        TTA(Identity(), method="median")
    with pytest.raises(TypeError, match="augmenter"):
        TTA("eda")
    with pytest.raises(ValueError, match="p must"):
        TokenDropout(1.5, mask_id=0)
    with pytest.raises(TypeError, match="augment"):
        text_views(TEXTS, object(), 2)
