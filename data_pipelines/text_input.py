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

Input that is not damaged text but not text at all is refused before anything is written
(`FileSource.check_readable`): a UTF-16 or UTF-32 file (by its byte-order mark), and a file whose
first MiB is mostly lines that fail to decode (binary data).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Iterable, Iterator, Optional

from etils import epath

from data_pipelines.files import expand_paths

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
    invalid_utf8_files: list = dataclasses.field(default_factory=list)  # [path, lines] of each file with some
    long_lines_split: int = 0
    empty_documents_skipped: int = 0

    def merge(self, other: "InputStats") -> "InputStats":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def warn(self, source: str = "input") -> None:
        """Logs one counted warning per kind of damage found."""
        for path, lines in self.invalid_utf8_files:  # one warning per file: it names the bad one
            logger.warning("%s: %d line(s) held invalid UTF-8; decoded with U+FFFD replacement", path, lines)
        unattributed = self.invalid_utf8_lines - sum(n for _, n in self.invalid_utf8_files)
        if unattributed > 0:  # TFDS examples: no file to name
            logger.warning("%s: %d line(s) held invalid UTF-8; decoded with U+FFFD replacement",
                           source, unattributed)
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


# Byte-order marks of encodings that are not UTF-8 (UTF-32 first: its LE mark starts with UTF-16's).
_FOREIGN_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32-LE"), (b"\x00\x00\xfe\xff", "UTF-32-BE"),
                 (b"\xff\xfe", "UTF-16-LE"), (b"\xfe\xff", "UTF-16-BE"))
_SNIFF_BYTES = 1 << 20


def check_text(path: str, head: bytes) -> None:
    """Refuses a file that is not UTF-8 text, from its first bytes: a foreign byte-order mark,
    or most lines failing to decode (a few bad lines are damage, repaired and counted)."""
    for bom, encoding in _FOREIGN_BOMS:
        if head.startswith(bom):
            raise ValueError(f"input file {path} is {encoding} text (byte-order mark {bom.hex(' ').upper()}); "
                             f"convert it to UTF-8, e.g. iconv -f {encoding} -t UTF-8")
    lines = head.split(b"\n")
    if len(head) == _SNIFF_BYTES:
        lines = lines[:-1]  # the last one may be cut mid-character
    lines = [line for line in lines if line.strip()]
    bad = 0
    for line in lines:
        try:
            line.decode("utf-8")
            bad += b"\x00" in line  # NUL: binary data, never text
        except UnicodeDecodeError:
            bad += 1
    if lines and bad > len(lines) / 2:
        raise ValueError(f"input file {path}: {bad} of the {len(lines)} lines in its first "
                         f"{len(head):,} bytes are not UTF-8 text (binary data?); expected UTF-8 text")


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
    with epath.Path(path).open("rb") as f:
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


INPUT_FORMATS = ("google", "paragraphs", "tfds")


def block_sentences(block: list[str], input_format: str, stats: InputStats,
                    max_line_chars: int = MAX_LINE_CHARS) -> list[str]:
    """A document's sentences from its raw lines (a file block or a TFDS text's lines), counted in stats.

    "google": a line is a sentence; "paragraphs" and "tfds": a line is a paragraph, split into
    sentences. Over-long sentences are split at whitespace; an empty result is counted as skipped.
    """
    if input_format == "google":
        sentences = block
    else:
        sentences = [s for paragraph in block if paragraph for s in split_sentences(paragraph)]
    sentences = _clean_sentences(sentences, stats, max_line_chars)
    if sentences:
        stats.documents += 1
        stats.sentences += len(sentences)
    else:
        stats.empty_documents_skipped += 1
    return sentences


@dataclasses.dataclass(frozen=True)
class FileSource:
    """One text file of the input: document d of source number n has the key (n, d)."""

    number: int
    path: str

    @property
    def name(self) -> str:
        return self.path

    def check_readable(self) -> None:
        """Fails now, naming the file, if it cannot be read (a directory, no permission, ...)."""
        try:
            with epath.Path(self.path).open("rb") as f:
                head = f.read(_SNIFF_BYTES)
        except (OSError, IsADirectoryError) as error:
            raise OSError(f"input file {self.path} cannot be read: {error}") from None
        check_text(self.path, head)

    def has_text(self) -> bool:
        return next(_iter_blocks(self.path, InputStats()), None) is not None

    def count_documents(self) -> int:
        """Blocks of the file, counted without splitting sentences (fixes the number of partitions)."""
        return sum(1 for _ in _iter_blocks(self.path, InputStats()))

    def blocks(self, stats: InputStats) -> Iterator[tuple[tuple[int, int], list[str]]]:
        """(key, raw lines) of every document of the file, in order."""
        stats.files += 1
        found = False
        invalid_before = stats.invalid_utf8_lines
        for d, block in enumerate(_iter_blocks(self.path, stats)):
            found = True
            yield (self.number, d), block
        if stats.invalid_utf8_lines > invalid_before:
            stats.invalid_utf8_files.append([self.path, stats.invalid_utf8_lines - invalid_before])
        if not found:
            stats.empty_files.append(self.path)


@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """Examples [start, stop) of a TFDS text split; example i has the key (0, i)."""

    name_: str
    split: str
    text_feature: str
    data_dir: Optional[str]
    start: int = 0
    stop: Optional[int] = None  # None: to the end (a split whose size the builder does not record)

    @property
    def name(self) -> str:
        return f"tfds:{self.name_}[{self.split}][{self.start}:{'' if self.stop is None else self.stop}]"

    @property
    def number(self) -> int:
        """Unique among the slices of a split (names the slice's spill files)."""
        return self.start

    def _split(self) -> str:
        return self.split if (self.start, self.stop) == (0, None) else f"{self.split}[{self.start}:{self.stop}]"

    def check_readable(self) -> None:
        pass  # checked by tfds_sources, which opened the builder

    def has_text(self) -> bool:
        return True  # an empty split is reported after reading

    def count_documents(self) -> int:
        if self.stop is not None:
            return self.stop - self.start
        return sum(1 for _ in self.blocks(InputStats()))

    def blocks(self, stats: InputStats) -> Iterator[tuple[tuple[int, int], list[str]]]:
        import tensorflow_datasets as tfds

        builder = tfds.builder(self.name_, data_dir=self.data_dir)
        ds = builder.as_dataset(split=self._split(), shuffle_files=False)
        stats.files += 1
        for i, example in enumerate(tfds.as_numpy(ds), start=self.start):
            value = example[self.text_feature]
            text = _decode(value, stats) if isinstance(value, bytes) else str(value)
            lines = [line.strip() for line in text.split("\n")]
            stats.lines += len(lines)
            yield (0, i), [line for line in lines if line]


def tfds_sources(name: str, split: str = "train", text_feature: str = "text", data_dir: Optional[str] = None,
                 examples_per_source: int = 10_000) -> list[TfdsSource]:
    """A TFDS text split (e.g. "wikipedia/20230601.en") as slices that workers read independently."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if text_feature not in builder.info.features:
        raise ValueError(f"TFDS dataset {name!r} has no feature {text_feature!r}; it has "
                         f"{sorted(builder.info.features)}")
    splits = builder.info.splits
    total = splits[split].num_examples if split in splits else 0
    if not total:  # no recorded size (a builder prepared without metadata): one source for the split
        return [TfdsSource(name, split, text_feature, data_dir)]
    return [TfdsSource(name, split, text_feature, data_dir, a, min(a + examples_per_source, total))
            for a in range(0, total, examples_per_source)]


def file_sources(files: str | Iterable[str]) -> list[FileSource]:
    """The expanded --input_file globs, numbered in order."""
    return [FileSource(n, path) for n, path in enumerate(expand_paths(files, what="input_file"))]


def iter_documents(sources, input_format: str, stats: InputStats,
                   max_line_chars: int = MAX_LINE_CHARS) -> Iterator[tuple[tuple[int, int], list[str]]]:
    """(key, sentences) of every non-empty document of the sources, in order, on one process."""
    for source in sources:
        for key, block in source.blocks(stats):
            sentences = block_sentences(block, input_format, stats, max_line_chars)
            if sentences:
                yield key, sentences


def _read(sources, input_format, stats, max_line_chars) -> Iterator[list[str]]:
    for source in sources:
        source.check_readable()
    had_text = False
    for _, sentences in iter_documents(sources, input_format, stats, max_line_chars):
        had_text = True
        yield sentences
    names = [s.name for s in sources]
    stats.warn(source=",".join(names[:3]) + (" ..." if len(names) > 3 else ""))
    if not had_text:
        raise ValueError(f"no text in the input file(s) {names}: every file is empty or blank")


def read_google_documents(files: str | Iterable[str], stats: Optional[InputStats] = None,
                          max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
    """Documents of files in Google's format (one sentence per line, blank line between documents).

    Args:
      files: comma-separated globs or a list of paths/globs.
      stats: filled with counts (a fresh one is used when None).
      max_line_chars: longer lines are split at whitespace and counted.
    """
    return _read(file_sources(files), "google", stats if stats is not None else InputStats(), max_line_chars)


def read_paragraph_documents(files: str | Iterable[str], stats: Optional[InputStats] = None,
                             max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
    """Documents of raw text: blank line between documents, one paragraph per line, split into sentences."""
    return _read(file_sources(files), "paragraphs", stats if stats is not None else InputStats(), max_line_chars)


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
                        max_line_chars: int = MAX_LINE_CHARS) -> Iterator[list[str]]:
    """Documents of a TFDS text dataset (e.g. "wikipedia/20230601.en", feature "text").

    Each example is a document; its non-blank lines are paragraphs, split into sentences.
    """
    return _read(tfds_sources(name, split, text_feature, data_dir), "tfds",
                 stats if stats is not None else InputStats(), max_line_chars)


def read_documents(source: str | Iterable[str], input_format: str = "google", **kwargs) -> Iterator[list[str]]:
    """Dispatch: input_format "google" | "paragraphs" (files) or "tfds" (source = dataset name)."""
    if input_format == "google":
        return read_google_documents(source, **kwargs)
    if input_format == "paragraphs":
        return read_paragraph_documents(source, **kwargs)
    if input_format == "tfds":
        return read_tfds_documents(source, **kwargs)
    raise ValueError(f"input_format must be 'google', 'paragraphs' or 'tfds', got {input_format!r}")
