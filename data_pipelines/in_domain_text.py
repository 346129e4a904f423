"""Write the unlabelled training-split text of the shipped tasks as pretraining input.

    python -m data_pipelines.in_domain_text --data $BERT_JAX_DATA --output DIR/in_domain.txt

The CPU recipe (experiments/pretrain.py:cpu, and the paper tables' CPU budget) pretrains on the
shared corpus plus this in-domain text. Only training
splits are read (never dev or test), labels are dropped, and the output is in Google's format:
one sentence per line, a blank line after every `--lines_per_document` lines. Rotten Tomatoes
gives its review snippets, the Bible pairs both of their verses, WNUT-16 its tweets (tokens
joined by spaces).
"""

import argparse
import pathlib

from bert_jax.tasks import ner, tsv


def rotten_tomatoes(data: pathlib.Path) -> list[str]:
    return [row["sentence"] for _, row in tsv.read_rows(data / "sentiment/rotten_tomatoes/train.tsv")]


def bible(data: pathlib.Path) -> list[str]:
    rows = tsv.read_rows(data / "paraphrase/bible/train.tsv")
    return [text for _, row in rows for text in (row["sentence_a"], row["sentence_b"])]


def wnut16(data: pathlib.Path) -> list[str]:
    return [" ".join(sentence.words) for sentence in ner.read_conll(data / "ner/wnut16/train.conll")]


SOURCES = {"rotten_tomatoes": rotten_tomatoes, "bible": bible, "wnut16": wnut16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, type=pathlib.Path, help="the shared data folder ($BERT_JAX_DATA)")
    parser.add_argument("--output", required=True, type=pathlib.Path)
    parser.add_argument("--lines_per_document", type=int, default=8)
    args = parser.parse_args()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as out:
        for name, read in SOURCES.items():
            lines = [" ".join(text.split()) for text in read(args.data)]
            lines = [line for line in lines if line]
            for start in range(0, len(lines), args.lines_per_document):
                out.write("\n".join(lines[start:start + args.lines_per_document]) + "\n\n")
            print(f"{name}: {len(lines)} lines")


if __name__ == "__main__":
    main()
