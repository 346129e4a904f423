"""Train a SentencePiece vocabulary for BERT, with its special tokens reserved.

    python -m data_pipelines.train_vocab --input 'corpus/*.txt' --vocab-size 32000 \\
        --model-type unigram --output vocab/spm32k

writes `spm32k.model` and `spm32k.vocab`; `load_tokenizer("vocab/spm32k.model")` then gives the
same interface as a WordPiece vocab.txt, so an experiment switches vocabularies with one field.

Reserved ids: [PAD]=0 (SentencePiece's pad piece), [UNK]=1 (its unk piece), [CLS]=2, [SEP]=3,
[MASK]=4 (control symbols: they never come out of text, so a literal "[MASK]" in the corpus stays
text, as with Google's WordPiece). No BOS/EOS. Inputs are read as pretraining text
(`--input-format google`: one sentence per line, blank lines between documents; or `paragraphs`),
with the same counted handling of bad UTF-8 and huge lines. `--lowercase` (default on) lowercases
the training text with Python's str.lower, as `load_tokenizer(..., lowercase=True)` does at use.
"""

from __future__ import annotations

import argparse
import os
import sys

from data_pipelines import text_input
from data_pipelines.tokenization import SPECIAL_TOKENS


def train(inputs: str, vocab_size: int, model_type: str, output: str, lowercase: bool = True,
          input_format: str = "google", character_coverage: float = 0.9995,
          input_sentence_size: int = 10_000_000, seed: int = 12345, num_threads: int | None = None) -> str:
    """Trains and returns the path of the `.model` file."""
    import sentencepiece as spm

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} reserved tokens, got {vocab_size}")
    stats = text_input.InputStats()

    def sentences():
        for doc in text_input.read_documents(inputs, input_format, stats=stats):
            for sentence in doc:
                yield sentence.lower() if lowercase else sentence

    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences(), model_prefix=output, vocab_size=vocab_size,
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_pipelines.train_vocab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="comma-separated globs of text files")
    p.add_argument("--input-format", default="google", choices=("google", "paragraphs"))
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-type", default="unigram", choices=("unigram", "bpe"))
    p.add_argument("--output", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--character-coverage", type=float, default=0.9995)
    p.add_argument("--input-sentence-size", type=int, default=10_000_000,
                   help="sentences sampled for training (SentencePiece's input_sentence_size)")
    p.add_argument("--seed", type=int, default=12345)
    args = p.parse_args(argv)
    train(args.input, args.vocab_size, args.model_type, args.output, lowercase=args.lowercase,
          input_format=args.input_format, character_coverage=args.character_coverage,
          input_sentence_size=args.input_sentence_size, seed=args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
