"""Named-entity recognition (token classification) from TFDS `conll2003` or any CoNLL-format file.

File format: one token per line, its tag in the last column (`token<TAB>tag`, or CoNLL-2003's
space-separated `token POS chunk tag`), a blank line between sentences, `-DOCSTART-` lines
ignored. Tags may be BIO (IOB2) or IOB1; entity scoring follows conlleval, which reads both.

As in the BERT paper, a word's label sits on its first sub-token; the other sub-tokens get
weight 0 in the loss and are ignored at prediction. A word the tokenizer turns into no
sub-token at all (e.g. a lone control or zero-width character) is predicted "O"; those are
counted in the log. A sentence longer than `max_seq_length - 2` sub-tokens is cut at word
boundaries into several sequences (counted in the log), so every word is scored.

The head (config.task.head, features.HeadOptions): BERT's dense layer per token (default), or a
BiLSTM before it ("bilstm"; the paper's Table 5 row), and the feature-based mode of Table 7
(config.task.features: the encoder frozen, its hidden states combined, then a two-layer BiLSTM;
the run must freeze the encoder with config.optimizer.frozen_params='^bert/').

Batches: input_ids, token_type_ids, attention_mask, label_ids, label_weights
([batch, length]), sequence_index ([batch]), example_weight ([batch]).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Sequence

import numpy as np
from etils import epath

from bert_jax import metrics as metrics_lib
from bert_jax.tasks import features as features_lib
from bert_jax.tasks.base import Task
from bert_jax.tasks.tsv import check_label_text

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TaggedSentence:
    guid: str
    words: tuple[str, ...]
    tags: tuple[str, ...]


def read_conll(path: str | pathlib.Path) -> list[TaggedSentence]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file {path} does not exist")
    sentences, words, tags, first_line = [], [], [], None

    def flush():
        if words:
            sentences.append(TaggedSentence(f"{path.name}:{first_line}", tuple(words), tuple(tags)))
            words.clear()
            tags.clear()

    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(_decoded(f, path), start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                flush()
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if fields[0] == "-DOCSTART-":
                flush()
                continue
            if len(fields) < 2 or not fields[-1].strip():
                raise ValueError(f"{path}:{line_number}: expected 'token<TAB>tag' (or space-separated columns), found {line!r}")
            tag = fields[-1].strip()
            if tag != "O" and (len(tag) < 3 or tag[0] not in "BIES" or tag[1] != "-"):
                raise ValueError(f"{path}:{line_number}: tag {tag!r} is not O or B-/I-/E-/S-<type>")
            check_label_text(tag, f"{path}:{line_number}: tag")
            if not words:
                first_line = line_number
            words.append(fields[0])
            tags.append(tag)
    flush()
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


def _decoded(lines, path):
    """The file's lines, a decoding error named by file and line."""
    line_number = 0
    try:
        for line_number, line in enumerate(lines, start=1):
            yield line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{line_number + 1}: not UTF-8 text ({e.reason}); a CoNLL file must be UTF-8") from None


def warn_unseen_tags(eval_sentences: Sequence[TaggedSentence], labels: Sequence[str], what: str) -> int:
    """Held-out tags the model cannot output, reported before step 1 (they get weight 0 in the
    eval loss, and their entities count as missed in F1)."""
    known = set(labels)
    unseen = [(s.guid, t) for s in eval_sentences for t in s.tags if t not in known]
    if unseen:
        log.warning("%s: %d tags unseen in training (%s), e.g. %r in sentence %s; the model cannot predict "
                    "them and their entities count as missed", what, len(unseen),
                    sorted({t for _, t in unseen})[:10], unseen[0][1], unseen[0][0])
    return len(unseen)


def read_tfds(split: str, data_dir: str | None = None) -> list[TaggedSentence]:
    """TFDS `conll2003`; split is "train", "dev" or "test"."""
    import tensorflow_datasets as tfds

    dataset, info = tfds.load("conll2003", split=split, data_dir=data_dir, with_info=True)
    names = info.features["ner"].feature.names
    sentences = []
    for index, row in enumerate(tfds.as_numpy(dataset)):
        words = tuple(t.decode("utf-8") for t in row["tokens"])
        tags = tuple(names[int(i)] for i in row["ner"])
        sentences.append(TaggedSentence(f"conll2003/{split}:{index}", words, tags))
    return sentences


def label_list(sentences: Sequence[TaggedSentence]) -> list[str]:
    """"O" first, then the other tags sorted by type and prefix (B before I)."""
    tags = {t for s in sentences for t in s.tags} - {"O"}
    return ["O", *sorted(tags, key=lambda t: (t[2:], t[0]))]


@dataclasses.dataclass
class NerFeatures:
    arrays: dict[str, np.ndarray]
    # Per sequence: which sentence and which of its words the labelled positions hold.
    sentence_index: np.ndarray  # [num_sequences]
    word_index: np.ndarray  # [num_sequences, length] word of the sentence at a first sub-token, else -1


def build_features(tokenizer, sentences: Sequence[TaggedSentence], labels: Sequence[str], max_seq_length: int, what: str) -> NerFeatures:
    label_index = {t: i for i, t in enumerate(labels)}
    budget = max_seq_length - 2
    rows = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "label_ids", "label_weights")}
    sentence_index, word_index = [], []
    num_split = num_empty_words = num_cut_words = num_unknown_tags = 0
    for s_index, sentence in enumerate(sentences):
        # Sub-token ids grouped by word.
        token_ids, word_ids = tokenizer.tokenize_words(sentence.words)
        pieces = [[] for _ in sentence.words]
        for token_id, word in zip(token_ids.tolist(), word_ids.tolist()):
            pieces[word].append(token_id)
        num_empty_words += sum(1 for p in pieces if not p)
        for p in pieces:
            if len(p) > budget:
                del p[budget:]
                num_cut_words += 1
        # Greedy cut at word boundaries.
        chunks, current, size = [], [], 0
        for w, p in enumerate(pieces):
            if size + len(p) > budget and current:
                chunks.append(current)
                current, size = [], 0
            current.append(w)
            size += len(p)
        chunks.append(current)
        num_split += len(chunks) > 1
        for chunk in chunks:
            ids = np.full(max_seq_length, tokenizer.pad_id, np.int32)
            label_ids = np.zeros(max_seq_length, np.int32)
            weights = np.zeros(max_seq_length, np.float32)
            words_at = np.full(max_seq_length, -1, np.int32)
            position = 1
            ids[0] = tokenizer.cls_id
            for w in chunk:
                if pieces[w]:
                    tag = sentence.tags[w]
                    if tag not in label_index:
                        num_unknown_tags += 1  # a tag never seen in training: cannot be learnt or predicted
                    label_ids[position] = label_index.get(tag, 0)
                    weights[position] = 1.0 if tag in label_index else 0.0
                    words_at[position] = w
                    ids[position : position + len(pieces[w])] = pieces[w]
                    position += len(pieces[w])
            ids[position] = tokenizer.sep_id
            mask = np.zeros(max_seq_length, np.int32)
            mask[: position + 1] = 1
            rows["input_ids"].append(ids)
            rows["token_type_ids"].append(np.zeros(max_seq_length, np.int32))
            rows["attention_mask"].append(mask)
            rows["label_ids"].append(label_ids)
            rows["label_weights"].append(weights)
            sentence_index.append(s_index)
            word_index.append(words_at)
    arrays = {k: np.stack(v) for k, v in rows.items()}
    arrays["sequence_index"] = np.arange(len(sentence_index), dtype=np.int32)
    log.info(
        "%s: %d sentences -> %d sequences of max_seq_length=%d; %d sentences split at word boundaries, "
        "%d words longer than the limit cut, %d words with no sub-token (predicted O), %d tags unseen in training",
        what, len(sentences), len(sentence_index), max_seq_length, num_split, num_cut_words, num_empty_words, num_unknown_tags,
    )
    return NerFeatures(arrays, np.asarray(sentence_index, np.int32), np.stack(word_index))


class NerTask(features_lib.ArrayFeaturesTask, Task):
    main_metric = "f1"
    higher_is_better = True

    def __init__(self, *, tokenizer, train_sentences, eval_sentences, max_seq_length: int = 128, name: str = "ner",
                 head: features_lib.HeadOptions | None = None, frozen_params: str = ""):
        """`head`: BERT's linear tagger by default; a BiLSTM, and the feature-based mode (see
        features.HeadOptions). `frozen_params` is config.optimizer.frozen_params: a feature-based
        model is refused unless it freezes the whole encoder (features.check_frozen_encoder)."""
        self.head = features_lib.HeadOptions() if head is None else head
        self.frozen_params = frozen_params
        self.tokenizer = tokenizer
        self.train_sentences = list(train_sentences)
        self.eval_sentences = list(eval_sentences)
        self.labels = label_list(self.train_sentences)
        warn_unseen_tags(self.eval_sentences, self.labels, f"{name} eval")
        self.max_seq_length = max_seq_length
        self.name = name
        self._train_features = None
        self._eval_features = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> list[str]:
        """Tag i's name at index i (the trainer records them for exports)."""
        return list(self.labels)

    @property
    def train_features(self) -> NerFeatures:
        if self._train_features is None:
            self._train_features = build_features(self.tokenizer, self.train_sentences, self.labels, self.max_seq_length, f"{self.name} train")
        return self._train_features

    @property
    def eval_features(self) -> NerFeatures:
        if self._eval_features is None:
            self._eval_features = build_features(self.tokenizer, self.eval_sentences, self.labels, self.max_seq_length, f"{self.name} eval")
        return self._eval_features

    @property
    def num_train_examples(self) -> int:
        return int(self.train_features.arrays["input_ids"].shape[0])

    def make_model(self, bert_config):
        features_lib.check_vocab(self.tokenizer, bert_config)
        model = self.head.token_model(bert_config, self.num_labels)
        features_lib.check_frozen_encoder(model, self.head.features, self.frozen_params)
        return model

    def _logits(self, model, params, batch, deterministic, dropout_rng=None):
        outputs = features_lib.apply_model(model, params, batch, deterministic, dropout_rng)
        return outputs["logits"].astype("float32")  # [batch, length, num_labels]

    def loss_and_metrics(self, model, params, batch, dropout_rng):
        import jax.numpy as jnp
        import optax

        logits = self._logits(model, params, batch, False, dropout_rng)
        weights = batch["label_weights"] * batch["example_weight"][:, None]  # first sub-tokens of real rows
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label_ids"])
        denominator = jnp.maximum(weights.sum(), 1.0)
        loss = (per_token * weights).sum() / denominator
        accuracy = ((logits.argmax(-1) == batch["label_ids"]) * weights).sum() / denominator
        return loss, {"loss": loss, "token_accuracy": accuracy}

    def predict(self, model, params, batch):
        return {"label_ids": self._logits(model, params, batch, True).argmax(-1).astype("int32")}

    def predicted_tags(self, predictions, batches) -> list[list[str]]:
        """Per eval sentence, one predicted tag per word."""
        features = self.eval_features
        tags = [["O"] * len(s.words) for s in self.eval_sentences]
        for p, batch in zip(predictions, batches):
            real = np.asarray(batch["example_weight"]) > 0
            for row, sequence in zip(np.asarray(p["label_ids"])[real], np.asarray(batch["sequence_index"])[real]):
                sentence = tags[features.sentence_index[sequence]]
                words = features.word_index[sequence]
                for position in np.flatnonzero(words >= 0):
                    sentence[words[position]] = self.labels[row[position]]
        return tags

    def evaluate(self, predictions, batches) -> dict:
        predicted = self.predicted_tags(predictions, list(batches))
        gold = [list(s.tags) for s in self.eval_sentences]
        result = metrics_lib.entity_scores(gold, predicted)
        flat_gold = np.asarray([t for s in gold for t in s])
        flat_predicted = np.asarray([t for s in predicted for t in s])
        result["token_accuracy"] = metrics_lib.accuracy(flat_gold, flat_predicted)
        return {k: float(v) for k, v in result.items()}

    def write_predictions(self, predictions, batches, path) -> None:
        """CoNLL layout `word<TAB>gold<TAB>predicted`, the input conlleval reads."""
        predicted = self.predicted_tags(predictions, list(batches))
        lines = []  # written whole through etils.epath: `path` may be in a gs:// workdir
        for sentence, tags in zip(self.eval_sentences, predicted):
            lines += [f"{word}\t{gold}\t{tag}\n" for word, gold, tag in zip(sentence.words, sentence.tags, tags)]
            lines.append("\n")
        epath.Path(path).write_text("".join(lines), encoding="utf-8")


def from_config(config) -> NerTask:
    """The task of experiments/finetune_ner.py (registry name "ner")."""
    from bert_jax.tasks import finetuning

    head = finetuning.head_options(config)  # bad head fields fail before any file is read
    frozen_params = str(config.optimizer.get("frozen_params", "") or "")
    if head.features and not frozen_params:
        raise ValueError(f"config.task.features={head.features!r} (feature-based) needs the encoder frozen, but "
                         "config.optimizer.frozen_params is empty; set --config.optimizer.frozen_params='^bert/'")
    tokenizer = finetuning.load_tokenizer(config)
    t = config.task
    if t.tfds_name:
        if t.tfds_name != "conll2003":
            raise ValueError(f"config.task.tfds_name: only conll2003 is supported, found {t.tfds_name!r}")
        train = read_tfds("train", t.tfds_data_dir or None)
        evaluation = read_tfds(t.tfds_eval_split, t.tfds_data_dir or None)
        name = "conll2003"
    else:
        train = read_conll(finetuning.data_path(config.train_file, "train_file"))
        evaluation = read_conll(finetuning.data_path(config.eval_file, "eval_file"))
        name = pathlib.Path(config.train_file).parent.name or "ner"
    task = NerTask(tokenizer=tokenizer, train_sentences=train, eval_sentences=evaluation,
                   max_seq_length=int(config.max_seq_length), name=name, head=head, frozen_params=frozen_params)
    finetuning.resolve(config, tokenizer, task.num_train_examples)
    return task
