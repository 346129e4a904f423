"""Linear probe: how much sentence-classification signal do an encoder's frozen features hold?

    python benchmarks/linear_probe.py --init DIR [--vocab-file V] \
        [--train data/quickstart/sentiment_train.tsv] [--dev data/quickstart/sentiment_dev.tsv]

DIR is anything `bert_jax.load_pretrained` reads (a pretraining workdir, a save_pretrained
directory, a Hugging Face directory). Each TSV needs `sentence` and `label` columns. For four
frozen feature sets the script fits scikit-learn's LogisticRegressionCV on the training rows
(5-fold cross-validation over 10 values of C) and prints dev accuracy, one JSON line per set:

    cls        the last layer's output at [CLS]
    pooled     the pooler's tanh(dense([CLS])), which fine-tuning's classifier reads
    mean       the last layer's outputs averaged over the real tokens
    emb_mean   the word embeddings averaged over the real tokens (no position or Transformer)

Fine-tuning can rewrite every weight, so a probe is not a fine-tuning result. It tells whether
pretraining put the signal into the features at all (docs/quickstart_budget.md uses it to
compare a pretrained tiny BERT with its random init).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/linear_probe.py` from a clone
    sys.path.insert(0, str(REPO))

from bert_jax import load_pretrained  # noqa: E402
from bert_jax.modeling.models import BertModel  # noqa: E402
from bert_jax.tasks import classification, features, tsv  # noqa: E402

FEATURE_SETS = ("cls", "pooled", "mean", "emb_mean")


def encoder_features(bert_config, bert_params, arrays: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, np.ndarray]:
    """arrays: input_ids / token_type_ids / attention_mask [n, length] -> {set: [n, hidden]}."""
    model = BertModel(bert_config)
    # params as an argument, not closed over: a closure would bake them into the executable as constants
    apply = jax.jit(lambda params, ids, types, mask: model.apply({"params": params}, ids, types, mask))
    table = np.asarray(bert_params["embeddings"]["word_embeddings"]["embedding"])
    out = {name: [] for name in FEATURE_SETS}
    for start in range(0, len(arrays["input_ids"]), batch_size):
        ids, types, mask = (arrays[k][start:start + batch_size] for k in ("input_ids", "token_type_ids", "attention_mask"))
        result = apply(bert_params, ids, types, mask)
        sequence = np.asarray(result["sequence_output"])  # [batch, length, hidden]
        weights = mask[..., None].astype(np.float32) / mask.sum(axis=1)[:, None, None]
        out["cls"].append(sequence[:, 0])
        out["pooled"].append(np.asarray(result["pooled_output"]))
        out["mean"].append((sequence * weights).sum(axis=1))
        out["emb_mean"].append((table[ids] * weights).sum(axis=1))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray) -> float:
    import warnings

    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")  # 1.8's API-change notices
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=5000))
    return float(probe.fit(train_x, train_y).score(dev_x, dev_y))


def _read(path: str, tokenizer, max_seq_length: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    examples = tsv.read_examples(path)
    if any(e.text_b is not None for e in examples):
        raise ValueError(f"{path}: the probe takes single sentences; this file has a second text column")
    return classification.encode_examples(tokenizer, examples, max_seq_length, path), np.array([e.label for e in examples])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="a checkpoint bert_jax.load_pretrained reads")
    parser.add_argument("--vocab-file", default="", help="default: the vocab.txt / spm.model beside the checkpoint")
    parser.add_argument("--train", default=str(REPO / "data/quickstart/sentiment_train.tsv"))
    parser.add_argument("--dev", default=str(REPO / "data/quickstart/sentiment_dev.tsv"))
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--no-lowercase", action="store_true")
    args = parser.parse_args(argv)

    bert_config, params = load_pretrained(args.init, check_vocab=False)
    tokenizer = features.load_tokenizer(features.resolve_vocab_file(args.vocab_file, args.init), not args.no_lowercase)
    features.check_vocab(tokenizer, bert_config)
    train_arrays, train_y = _read(args.train, tokenizer, args.max_seq_length)
    dev_arrays, dev_y = _read(args.dev, tokenizer, args.max_seq_length)
    bert_params = params["bert"] if "bert" in params else params
    train_x = encoder_features(bert_config, bert_params, train_arrays)
    dev_x = encoder_features(bert_config, bert_params, dev_arrays)
    for name in FEATURE_SETS:
        accuracy = probe_accuracy(train_x[name], train_y, dev_x[name], dev_y)
        print(json.dumps({"init": args.init, "features": name, "dev_accuracy": round(accuracy, 4)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
