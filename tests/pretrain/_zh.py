"""A tiny Chinese character vocabulary, its fast BERT tokenizer and a corpus (shared by the
pretrain tests)."""

from __future__ import annotations

SENTENCES = [
    "我喜欢自然语言处理",
    "今天天气很好我们去公园散步",
    "这部电影的剧情非常精彩",
    "机器学习需要大量的数据",
    "北京大学的学生在图书馆学习",
    "手机的电池续航时间太短了",
    "这家餐厅的服务态度很好",
    "深度学习模型训练需要显卡",
]


def char_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    chars = sorted({c for s in SENTENCES for c in s})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab), encoding="utf-8")
    return BertTokenizerFast(str(path))
