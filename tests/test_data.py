import json

import pytest

from resa_utils.data.corpora import default_corpus_texts, load_texts
from resa_utils.data.windows import token_windows


def test_default_corpus_is_offline_and_sizeable():
    texts = default_corpus_texts()
    assert len(texts) > 50 and sum(map(len, texts)) > 100_000
    assert texts == default_corpus_texts()  # stable order


def test_token_windows_shape_and_bos(tiny_lm):
    w = token_windows(load_texts(), tiny_lm.tokenizer, 16, n_windows=10)
    assert w.shape == (10, 16)
    assert (w[:, 0] == tiny_lm.tokenizer.bos_token_id).all()
    assert (w[:, 1:] != tiny_lm.tokenizer.bos_token_id).all()


def test_windows_are_contiguous_text(tiny_lm):
    tok = tiny_lm.tokenizer
    text = "alpha beta gamma delta " * 50
    w = token_windows([text], tok, 8, add_bos=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert w.flatten().tolist() == ids[: w.numel()]


def test_local_text_and_jsonl(tmp_path, tiny_lm):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "third"}) + "\n")
    assert load_texts(str(tmp_path)) == ["first doc", "second doc", "third"]
    with pytest.raises(ValueError, match="no field 'body'"):
        load_texts(str(tmp_path / "b.jsonl"), text_field="body")


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="corpus .* is empty"):
        load_texts(str(tmp_path / "empty.txt"))


def test_too_short_corpus_or_window(tiny_lm):
    with pytest.raises(ValueError, match="fewer than one window"):
        token_windows(["hi"], tiny_lm.tokenizer, 64)
    with pytest.raises(ValueError, match="seq_len"):
        token_windows(["hi"], tiny_lm.tokenizer, 1)
