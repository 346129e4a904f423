"""Train a BERT vocabulary: WordPiece (a Google-layout vocab.txt) or SentencePiece (unigram / BPE).

    python -m data_pipelines.train_vocab --input 'corpus/*.txt' --vocab_size 30522 \\
        --model_type wordpiece --num_unused 994 --output vocab/vocab.txt
    python -m data_pipelines.train_vocab --input 'corpus/*.txt' --vocab_size 32000 \\
        --model_type unigram --output vocab/spm32k

WordPiece (`tokenizers`' WordPiece trainer) writes a vocab.txt in Google's layout: [PAD] first,
then [unused0..] rows (--num_unused; bert-base-uncased has 994: 99 before [UNK], the rest after
[MASK]), [UNK] [CLS] [SEP] [MASK], then the learned tokens with "##" continuations. It trains on
the words bert_jax's own WordPiece tokenizer sees (Google's cleaning, lowercasing and accent
stripping when --do_lower_case, punctuation and CJK split), so `load_tokenizer(vocab.txt)`, the
pretraining data and the trainer use it as they use Google's.

SentencePiece writes `PREFIX.model` and `PREFIX.vocab`, with reserved ids [PAD]=0 (its pad
piece), [UNK]=1 (its unk piece), [CLS]=2, [SEP]=3, [MASK]=4 (control symbols: never produced from
text, so a literal "[MASK]" stays text, as with Google's WordPiece). No BOS/EOS.

Inputs are read as pretraining text (`--input_format google`: one sentence per line, blank lines
between documents; or `paragraphs`), with the same counted handling of bad UTF-8 and huge lines.
--holdout_every N keeps every Nth document out of training and reports tokens per word on them
(and, with --compare_vocab, the same for another vocab.txt and the share of its tokens found).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, Iterator

from data_pipelines import text_input
from data_pipelines.tokenization import SPECIAL_TOKENS

MODEL_TYPES = ("wordpiece", "unigram", "bpe")
# Google's bert-base-uncased: [unused0]..[unused98] sit between [PAD] and [UNK].
_UNUSED_BEFORE_UNK = 99
DEPRECATED = {"--input-format": "--input_format", "--vocab-size": "--vocab_size", "--model-type": "--model_type",
              "--character-coverage": "--character_coverage", "--input-sentence-size": "--input_sentence_size",
              "--lowercase": "--do_lower_case=true", "--no-lowercase": "--do_lower_case=false"}


def _sentences(inputs: str, input_format: str, lowercase: bool, stats, holdout_every: int = 0,
               progress: bool = True) -> Iterator[str]:
    from tqdm import tqdm

    bar = tqdm(unit=" docs", desc="reading", disable=None if progress else True, mininterval=1.0)
    for k, doc in enumerate(text_input.read_documents(inputs, input_format, stats=stats)):
        bar.update(1)
        if holdout_every and k % holdout_every == 0:
            continue
        for sentence in doc:
            yield sentence.lower() if lowercase else sentence
    bar.close()


def heldout_documents(inputs: str, input_format: str, holdout_every: int) -> list[list[str]]:
    """The documents --holdout_every kept out of training (every Nth, from the first)."""
    return [doc for k, doc in enumerate(text_input.read_documents(inputs, input_format))
            if holdout_every and k % holdout_every == 0]


def google_specials(num_unused: int) -> list[str]:
    """Google's order: [PAD], [unused0..98], [UNK], [CLS], [SEP], [MASK], [unused99..]."""
    unused = [f"[unused{i}]" for i in range(num_unused)]
    before = unused[:_UNUSED_BEFORE_UNK]
    return ["[PAD]", *before, "[UNK]", "[CLS]", "[SEP]", "[MASK]", *unused[len(before):]]


def train_wordpiece(inputs: str, vocab_size: int, output: str, lowercase: bool = True, input_format: str = "google",
                    num_unused: int = 0, limit_alphabet: int = 1000, min_frequency: int = 2,
                    holdout_every: int = 0, progress: bool = True) -> str:
    """Trains a WordPiece vocab.txt (Google's layout) and returns its path."""
    import tempfile

    from tokenizers import Tokenizer, models, trainers

    from data_pipelines.tokenization import WordPieceTokenizer

    specials = google_specials(num_unused)
    if vocab_size <= len(specials):
        raise ValueError(f"vocab_size must exceed the {len(specials)} special and unused tokens, got {vocab_size}")
    if not output.endswith(".txt"):
        raise ValueError(f"--output for --model_type wordpiece is the vocab.txt to write, got {output!r}")
    # bert_jax's normalizer and pre-tokenizer, taken from its WordPiece tokenizer (any vocab serves).
    with tempfile.TemporaryDirectory() as tmp:
        seed_vocab = os.path.join(tmp, "vocab.txt")
        with open(seed_vocab, "w", encoding="utf-8") as f:
            f.write("\n".join(SPECIAL_TOKENS) + "\n")
        ours = WordPieceTokenizer(seed_vocab, lowercase=lowercase)
    rust = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    rust.normalizer = ours._rust.normalizer
    rust.pre_tokenizer = ours._rust.pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, limit_alphabet=limit_alphabet,
        continuing_subword_prefix="##", show_progress=progress and sys.stderr.isatty())
    stats = text_input.InputStats()
    # Lowercasing is the normalizer's (with Google's final-sigma rule and accent stripping).
    rust.train_from_iterator(_sentences(inputs, input_format, False, stats, holdout_every, progress), trainer)
    vocab = rust.get_vocab()
    tokens = sorted(vocab, key=vocab.__getitem__)
    if [vocab[t] for t in tokens] != list(range(len(tokens))) or tokens[:len(specials)] != specials:
        raise RuntimeError(f"the WordPiece trainer returned ids that are not 0..{len(tokens) - 1} with the "
                           f"specials first; vocab.txt would not be in Google's layout")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp_out = output + ".tmp"
    with open(tmp_out, "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t in tokens))
    os.replace(tmp_out, output)
    print(f"read {stats.documents} documents, {stats.sentences} sentences from {stats.files} file(s)"
          + (f" (every {holdout_every}th document held out)" if holdout_every else "")
          + f"; wrote {output} ({len(tokens)} tokens: {len(specials)} special/unused, "
          f"{sum(t.startswith('##') for t in tokens)} '##' continuations; do_lower_case={lowercase})")
    if len(tokens) < vocab_size:
        print(f"note: the corpus supports only {len(tokens)} tokens at min_frequency={min_frequency} "
              f"(asked {vocab_size})")
    return output


def train(inputs: str, vocab_size: int, model_type: str, output: str, lowercase: bool = True,
          input_format: str = "google", character_coverage: float = 0.9995,
          input_sentence_size: int = 10_000_000, seed: int = 12345, num_threads: int | None = None,
          holdout_every: int = 0, progress: bool = True, **wordpiece_kwargs) -> str:
    """Trains and returns the path of the vocabulary (`.model` for SentencePiece, vocab.txt for WordPiece)."""
    if model_type == "wordpiece":
        return train_wordpiece(inputs, vocab_size, output, lowercase=lowercase, input_format=input_format,
                               holdout_every=holdout_every, progress=progress, **wordpiece_kwargs)
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} reserved tokens, got {vocab_size}")
    stats = text_input.InputStats()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_sentences(inputs, input_format, lowercase, stats, holdout_every, progress),
            model_prefix=output, vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=0, pad_piece="[PAD]", unk_id=1, unk_piece="[UNK]", bos_id=-1, eos_id=-1,
            control_symbols=["[CLS]", "[SEP]", "[MASK]"],
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True, seed_sentencepiece_size=1_000_000,
            num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as err:
        raise ValueError(f"SentencePiece training on {inputs!r} (vocab_size={vocab_size}, "
                         f"{model_type}) failed: {err}") from err
    print(f"read {stats.documents} documents, {stats.sentences} sentences from {stats.files} file(s); "
          f"wrote {output}.model and {output}.vocab ({vocab_size} pieces, {model_type})")
    return output + ".model"


def tokens_per_word(vocab: str, documents: Iterable[list[str]], lowercase: bool = True) -> tuple[float, int, int]:
    """(tokens / whitespace-separated words, tokens, words) of the documents under `vocab`."""
    from data_pipelines.tokenization import load_tokenizer

    tok = load_tokenizer(vocab, lowercase=lowercase)
    sentences = [s for doc in documents for s in doc]
    _, lengths = tok.encode_ids_flat(sentences)
    words = sum(len(s.split()) for s in sentences)
    return float(lengths.sum()) / max(words, 1), int(lengths.sum()), words


def vocab_overlap(vocab: str, reference: str) -> tuple[float, int, int]:
    """(share of `reference`'s tokens that `vocab` also has, shared, reference size); both
    counted without [unused*] rows and the five special tokens."""
    from data_pipelines.tokenization import read_vocab_file

    def real(path):
        return {t for t in read_vocab_file(path) if t not in SPECIAL_TOKENS and not t.startswith("[unused")}

    ours, theirs = real(vocab), real(reference)
    return len(ours & theirs) / len(theirs), len(ours & theirs), len(theirs)


def main(argv=None) -> None:
    from bert_jax.cli_flags import HelpFormatter, parse_bool, rewrite_deprecated

    p = argparse.ArgumentParser(prog="python -m data_pipelines.train_vocab", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--input", required=True, help="comma-separated globs of text files")
    p.add_argument("--input_format", default="google", choices=("google", "paragraphs"))
    p.add_argument("--vocab_size", type=int, required=True, help="entries, special and unused rows included")
    p.add_argument("--model_type", default="unigram", choices=MODEL_TYPES)
    p.add_argument("--output", required=True,
                   help="wordpiece: the vocab.txt to write; SentencePiece: prefix of PREFIX.model and PREFIX.vocab")
    p.add_argument("--do_lower_case", type=parse_bool, default=True, help="uncased vocabulary")
    p.add_argument("--num_unused", type=int, default=0, help="wordpiece: [unusedN] rows, in Google's places")
    p.add_argument("--limit_alphabet", type=int, default=1000, help="wordpiece: most single characters kept")
    p.add_argument("--min_frequency", type=int, default=2, help="wordpiece: least count of a merged token")
    p.add_argument("--character_coverage", type=float, default=0.9995, help="SentencePiece")
    p.add_argument("--input_sentence_size", type=int, default=10_000_000,
                   help="SentencePiece: sentences sampled for training (its input_sentence_size)")
    p.add_argument("--seed", type=int, default=12345, help="SentencePiece")
    p.add_argument("--holdout_every", type=int, default=0,
                   help="keep every Nth document out of training and report tokens per word on them (0: none)")
    p.add_argument("--compare_vocab", default=None,
                   help="a vocab.txt to compare with (e.g. bert-base-uncased): token overlap and, with "
                        "--holdout_every, its tokens per word on the same held-out text")
    args = p.parse_args(rewrite_deprecated(argv, DEPRECATED, "data_pipelines.train_vocab"))
    kwargs = {}
    if args.model_type == "wordpiece":
        kwargs = dict(num_unused=args.num_unused, limit_alphabet=args.limit_alphabet, min_frequency=args.min_frequency)
    path = train(args.input, args.vocab_size, args.model_type, args.output, lowercase=args.do_lower_case,
                 input_format=args.input_format, character_coverage=args.character_coverage,
                 input_sentence_size=args.input_sentence_size, seed=args.seed, holdout_every=args.holdout_every,
                 **kwargs)
    if args.compare_vocab and args.model_type == "wordpiece":
        share, shared, total = vocab_overlap(path, args.compare_vocab)
        print(f"overlap: {shared} of the {total} tokens of {args.compare_vocab} ({share:.1%}) are in {path} "
              f"(special and [unused] rows not counted)")
    if args.holdout_every:
        held = heldout_documents(args.input, args.input_format, args.holdout_every)
        for name in [path] + ([args.compare_vocab] if args.compare_vocab else []):
            rate, n_tokens, n_words = tokens_per_word(name, held, lowercase=args.do_lower_case)
            print(f"held-out ({len(held)} documents, {n_words} words): {rate:.4f} tokens per word "
                  f"({n_tokens} tokens) with {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
