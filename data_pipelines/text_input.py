"""Pretraining text in, documents (lists of sentences) out.

Three sources, one output type (`list[str]` per document, one sentence per item):

* `read_google_documents(files)`: google-research/bert's input format, one sentence per line and a
  blank line between documents. Each file also starts a new document (Google's script lets the
  last document of a file run on into the next file; that is an accident of its reader).
* `read_paragraph_documents(files)`: raw text, a blank line between documents, any number of
  paragraphs per document, one paragraph per line; paragraphs are split into sentences.
* `read_tfds_documents("wikipedia/20230601.en")`: a TFDS text dataset; each example's text feature
  is a document, its lines paragraphs.

Damaged input never crashes a run; it is repaired and counted in `InputStats`, and a warning
gives the counts:
* invalid UTF-8 -> decoded with U+FFFD replacement (which the tokenizer then drops);
* a line over `max_line_chars` (default 20,000 characters; BERT's 512-token rows hold ~2,500) ->
  split at whitespace into pieces of at most that size (each piece a sentence);
* empty documents (blank runs, documents of only whitespace) -> skipped;
* empty files -> skipped; if no input holds any text at all, a ValueError names the files.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from typing import Iterable, Iterator, Optional

from data_pipelines.tfrecord_io import expand_paths

logger = logging.getLogger(__name__)

MAX_LINE_CHARS = 20_000

# Common English abbreviations that end with a period but rarely end a sentence.
_ABBREVIATIONS = (
    "mr mrs ms dr prof sr jr st mt ft gen col lt sgt capt cmdr adm gov sen rep rev hon pres "
    "vs etc e.g i.e cf al approx dept est fig inc ltd co corp no nos vol pp ed eds "
    "jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k u.n d.c a.m p.m").split()


@dataclasses.dataclass
class InputStats:
    """Counts of what was read and what had to be repaired."""

    files: int = 0
    empty_files: list[str] = dataclasses.field(default_factory=list)
    lines: int = 0
    documents: int = 0
    sentences: int = 0
    invalid_utf8_lines: int = 0
    long_lines_split: int = 0
    empty_documents_skipped: int = 0

    def merge(self, other: "InputStats") -> "InputStats":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def warn(self, source: str = "input") -> None:
        """Logs one counted warning per kind of damage found."""
        if self.invalid_utf8_lines:
            logger.warning("%s: %d line(s) held invalid UTF-8; decoded with U+FFFD replacement",
                           source, self.invalid_utf8_lines)
        if self.long_lines_split:
            logger.warning("%s: %d line(s) longer than the line limit were split at whitespace",
                           source, self.long_lines_split)
        if self.empty_documents_skipped:
            logger.warning("%s: skipped %d empty document(s)", source, self.empty_documents_skipped)
        if self.empty_files:
            logger.warning("%s: %d empty file(s) skipped: %s", source, len(self.empty_files),
                           ", ".join(self.empty_files[:5]) + (" ..." if len(self.empty_files) > 5 else ""))


def _decode(raw: bytes, stats: InputStats) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        stats.invalid_utf8_lines += 1
        return raw.decode("utf-8", errors="replace")


def split_long_line(line: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars` characters, cut at the last whitespace before the limit."""
    pieces = []
    while len(line) > max_chars:
        cut = line.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars  # no whitespace: a hard cut
        pieces.append(line[:cut].strip())
        line = line[cut:].strip()
    if line:
        pieces.append(line)
    return [p for p in pieces if p]


def _clean_sentences(lines: Iterable[str], stats: InputStats, max_line_chars: int) -> list[str]:
    out = []
    for line in lines:
        if len(line) > max_line_chars:
            stats.long_lines_split += 1
            out += split_long_line(line, max_line_chars)
        else:
            out.append(line)
    return out


def _iter_file_lines(path: str, stats: InputStats) -> Iterator[str]:
    """Stripped lines of a file, decoded leniently."""
    with open(path, "rb") as f:
        for raw in f:
            stats.lines += 1
            yield _decode(raw, stats).strip()


def _iter_blocks(path: str, stats: InputStats) -> Iterator[list[str]]:
    """Runs of non-blank lines of a file (blank lines separate them)."""
    block: list[str] = []
    blank_run = 0
    seen_block = False
    for line in _iter_file_lines(path, stats):
        if line:
            if blank_run > 1 and seen_block:
                # Google's reader makes an empty document of every extra blank line and drops it.
                stats.empty_documents_skipped += blank_run - 1
            blank_run = 0
            block.append(line)
        else:
            blank_run += 1
            if block:
                seen_block = True
                yield block
                block = []
    if block:
        yield block


def _read(files, splitter, stats, max_line_chars) -> Iterator[list[str]]:
    paths = expand_paths(files)
    had_text = False
    for path in paths:
        stats.files += 1
        if os.path.getsize(path) == 0:
            stats.empty_files.append(path)
            continue
        file_docs = 0
        for block in _iter_blocks(path, stats):
            sentences = _clean_sentences(splitter(block), stats, max_line_chars)
            if not sentences:
                stats.empty_documents_skipped += 1
                continue
            stats.documents += 1
            stats.sentences += len(sentences)
            file_docs += 1
            had_text = True
            yield sentences
        if file_docs == 0 and path not in stats.empty_files:
            stats.empty_files.append(path)
    stats.warn(source=",".join(paths[:3]) + (" ..." if len(paths) > 3 else ""))
    if not had_text:
        raise ValueError(f"no text in the input file(s) {paths}: every file is empty or blank")


def read_google_documents(files: str | Iterable[str], stats: Optional[InputStats] = None,
                          max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
    """Documents of files in Google's format (one sentence per line, blank line between documents).

    Args:
      files: comma-separated globs or a list of paths/globs.
      stats: filled with counts (a fresh one is used when None).
      max_line_chars: longer lines are split at whitespace and counted.
    """
    return _read(files, lambda block: block, stats if stats is not None else InputStats(), max_line_chars)


def read_paragraph_documents(files: str | Iterable[str], stats: Optional[InputStats] = None,
                             max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
    """Documents of raw text: blank line between documents, one paragraph per line, split into sentences."""
    def splitter(block):
        return [s for paragraph in block for s in split_sentences(paragraph)]

    return _read(files, splitter, stats if stats is not None else InputStats(), max_line_chars)


@functools.lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(_ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


_SPACE = re.compile(r"\s+")


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph (NLTK's Punkt with an English abbreviation list, no model download)."""
    paragraph = _SPACE.sub(" ", paragraph).strip()
    if not paragraph:
        return []
    return [s.strip() for s in _punkt().tokenize(paragraph) if s.strip()]


def read_tfds_documents(name: str, split: str = "train", text_feature: str = "text",
                        data_dir: Optional[str] = None, stats: Optional[InputStats] = None,
                        max_line_chars: int = MAX_LINE_CHARS, shard_index: int = 0,
                        num_shards: int = 1) -> Iterator[list[str]]:
    """Documents of a TFDS text dataset (e.g. "wikipedia/20230601.en", feature "text").

    Each example is a document; its non-blank lines are paragraphs, split into sentences.
    `shard_index`/`num_shards` read every num_shards-th example (one share per worker/host).
    """
    import tensorflow_datasets as tfds

    stats = stats if stats is not None else InputStats()
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    if text_feature not in features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_feature!r}; it has {sorted(features)}")
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index)
    had_text = False
    for example in tfds.as_numpy(ds):
        value = example[text_feature]
        text = _decode(value, stats) if isinstance(value, bytes) else str(value)
        lines = [line.strip() for line in text.split("\n")]
        stats.lines += len(lines)
        sentences = [s for line in lines if line for s in split_sentences(line)]
        sentences = _clean_sentences(sentences, stats, max_line_chars)
        if not sentences:
            stats.empty_documents_skipped += 1
            continue
        stats.documents += 1
        stats.sentences += len(sentences)
        had_text = True
        yield sentences
    stats.warn(source=f"tfds:{name}[{split}]")
    if not had_text:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} holds no text in feature {text_feature!r}")


def read_documents(source: str | Iterable[str], input_format: str = "google", **kwargs) -> Iterator[list[str]]:
    """Dispatch: input_format "google" | "paragraphs" (files) or "tfds" (source = dataset name)."""
    if input_format == "google":
        return read_google_documents(source, **kwargs)
    if input_format == "paragraphs":
        return read_paragraph_documents(source, **kwargs)
    if input_format == "tfds":
        return read_tfds_documents(source, **kwargs)
    raise ValueError(f"input_format must be 'google', 'paragraphs' or 'tfds', got {input_format!r}")
