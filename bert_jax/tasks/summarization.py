"""Extractive summarisation, BertSum-style (Liu, 2019, "Fine-tune BERT for Extractive Summarization").

Input: `[CLS] s1 [SEP] [CLS] s2 [SEP] ...` with interval token types (0 for odd sentences, 1
for even ones). Each sentence is scored by a linear layer on its own `[CLS]` vector (the
positions are gathered), trained with binary cross-entropy against oracle labels: the
sentences a greedy search picks to maximise ROUGE-1 + ROUGE-2 F1 against the reference
summary (at most `oracle_size`, stopping when no sentence helps). At prediction the
`summary_size` (3) best-scoring sentences are taken in document order, skipping a sentence
that repeats a trigram of one already chosen (BertSum's trigram blocking, a config knob).

Length: sentences are packed until `max_seq_length` (512, BertSum's limit) is reached; the
sentences that no longer fit cannot be chosen, and are counted in the log. A single sentence
longer than the rest of the budget is cut.

Data: TFDS `cnn_dailymail` (`article`, `highlights`; the article is split into sentences by a
punctuation rule, the highlights by line) or local JSONL lines `{"sentences": [...],
"summary": "..."}`. Scores: ROUGE-1/2/L and ROUGE-Lsum F1 (x100) from `rouge-score`.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import pathlib
import re
from typing import Sequence

import numpy as np
from etils import epath
from flax import linen as nn

from bert_jax.config import BertConfig
from bert_jax.modeling.common import gather_positions
from bert_jax.modeling.heads import EncoderInputs, logits_dense
from bert_jax.modeling.models import BertWithHead
from bert_jax.tasks import features as features_lib
from bert_jax.tasks.base import Task

log = logging.getLogger(__name__)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


@dataclasses.dataclass(frozen=True)
class Document:
    guid: str
    sentences: tuple[str, ...]
    summary: str  # reference; sentences separated by "\n" (for ROUGE-Lsum)


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


_ABBREVIATION = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|Gen|Gov|Sen|Rep|Lt|Col|Capt|Sgt|No|vs|etc|Inc|Co|Corp|Ltd|Jan|Feb|Mar|Apr|Aug|Sept|Sep|Oct|Nov|Dec)|\b[A-Z]|\b(?:[A-Za-z]\.)+[A-Za-z])\.$")


def split_sentences(text: str) -> list[str]:
    """A punctuation rule: a sentence ends at . ! or ? followed by space and a capital or digit,
    unless the word before the full stop is a common abbreviation or an initial ("Mr.", "U.S.", "J.")."""
    pieces, start, cut = [], 0, 0
    for match in _SENTENCE_END.finditer(text):
        end = match.start() + len(match.group(0).rstrip())
        if _ABBREVIATION.search(text[cut:end]):
            continue
        pieces.append(text[start:end].strip())
        start = cut = match.end()
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def read_jsonl(path: str | pathlib.Path) -> list[Document]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"summarisation file {path} does not exist")
    documents = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_number}: not JSON ({e})") from None
            sentences, summary = row.get("sentences"), row.get("summary")
            if not isinstance(sentences, list) or not sentences or not all(isinstance(s, str) for s in sentences):
                raise ValueError(f"{path}:{line_number}: 'sentences' must be a non-empty list of strings, found {sentences!r:.80}")
            if not isinstance(summary, str) or not summary.strip():
                raise ValueError(f"{path}:{line_number}: 'summary' must be a non-empty string, found {summary!r:.80}")
            if "\n" not in summary.strip():
                summary = "\n".join(split_sentences(summary))
            documents.append(Document(f"{path.name}:{line_number}", tuple(sentences), summary))
    if not documents:
        raise ValueError(f"{path} holds no documents")
    return documents


def read_tfds(split: str, data_dir: str | None = None, max_documents: int | None = None) -> list[Document]:
    """TFDS `cnn_dailymail` (split "train", "validation" or "test")."""
    import tensorflow_datasets as tfds

    dataset = tfds.load("cnn_dailymail", split=split, data_dir=data_dir)
    if max_documents:
        dataset = dataset.take(max_documents)
    documents = []
    for index, row in enumerate(tfds.as_numpy(dataset)):
        sentences = split_sentences(row["article"].decode("utf-8"))
        highlights = "\n".join(h.strip() for h in row["highlights"].decode("utf-8").split("\n") if h.strip())
        if sentences and highlights:
            documents.append(Document(f"cnn_dailymail/{split}:{index}", tuple(sentences), highlights))
    return documents


# ---- oracle labels -----------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(candidate: collections.Counter, reference: collections.Counter) -> float:
    overlap = sum((candidate & reference).values())
    if overlap == 0:
        return 0.0
    precision = overlap / sum(candidate.values())
    recall = overlap / sum(reference.values())
    return 2 * precision * recall / (precision + recall)


def greedy_oracle(sentences: Sequence[str], summary: str, max_sentences: int = 3) -> list[int]:
    """BertSum's greedy selection: add the sentence that most raises ROUGE-1 F + ROUGE-2 F."""
    from rouge_score import tokenize

    sentence_tokens = [tokenize.tokenize(s, None) for s in sentences]
    reference_tokens = tokenize.tokenize(summary, None)
    reference = [_ngrams(reference_tokens, n) for n in (1, 2)]
    chosen: list[int] = []
    best_score = 0.0
    for _ in range(max_sentences):
        best_candidate = None
        for i in range(len(sentences)):
            if i in chosen:
                continue
            tokens = [t for j in sorted(chosen + [i]) for t in sentence_tokens[j]]
            score = sum(_f1(_ngrams(tokens, n), reference[n - 1]) for n in (1, 2))
            if score > best_score:
                best_score, best_candidate = score, i
        if best_candidate is None:
            break
        chosen.append(best_candidate)
    return sorted(chosen)


def _trigrams(text: str) -> set:
    tokens = text.lower().split()
    return {tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)}


def select_sentences(scores: np.ndarray, sentences: Sequence[str], summary_size: int, block_trigrams: bool) -> list[int]:
    """Indices (document order) of the best-scoring sentences; scores [num_sentences]."""
    chosen, seen = [], set()
    for i in np.argsort(-scores, kind="stable"):
        trigrams = _trigrams(sentences[i])
        if block_trigrams and trigrams & seen:
            continue
        chosen.append(int(i))
        seen |= trigrams
        if len(chosen) == summary_size:
            break
    return sorted(chosen)


def rouge_scores(predicted: Sequence[str], references: Sequence[str]) -> dict:
    """Mean ROUGE F1 (x100); summaries have one sentence per line."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = collections.Counter()
    for prediction, reference in zip(predicted, references):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * totals[name] / max(len(predicted), 1) for name in ROUGE_TYPES}


# ---- features and model ------------------------------------------------------------------------


@dataclasses.dataclass
class SummarizationFeatures:
    arrays: dict[str, np.ndarray]  # input_ids, token_type_ids, attention_mask [N, L]; cls_positions, sentence_mask, labels [N, S]
    num_sentences_kept: np.ndarray  # [N] sentences that fit in max_seq_length


def build_features(tokenizer, documents: Sequence[Document], max_seq_length: int, oracle_size: int, what: str) -> SummarizationFeatures:
    rows = collections.defaultdict(list)
    kept_counts = []
    num_docs_cut = num_sentences_dropped = 0
    packed = []
    for document in documents:
        sentence_ids = tokenizer.encode_ids_batch(list(document.sentences))
        ids, types, cls_positions = [], [], []
        for index, tokens in enumerate(sentence_ids):
            room = max_seq_length - len(ids) - 2
            if room <= 0:
                break
            cls_positions.append(len(ids))
            piece = [tokenizer.cls_id, *tokens[:room], tokenizer.sep_id]
            ids += piece
            types += [index % 2] * len(piece)
        dropped = len(document.sentences) - len(cls_positions)
        num_docs_cut += dropped > 0
        num_sentences_dropped += dropped
        oracle = greedy_oracle(document.sentences[: len(cls_positions)], document.summary, oracle_size)
        packed.append((ids, types, cls_positions, oracle))
        kept_counts.append(len(cls_positions))
    max_sentences = max(kept_counts)
    for ids, types, cls_positions, oracle in packed:
        input_ids = np.full(max_seq_length, tokenizer.pad_id, np.int32)
        input_ids[: len(ids)] = ids
        token_types = np.zeros(max_seq_length, np.int32)
        token_types[: len(types)] = types
        mask = np.zeros(max_seq_length, np.int32)
        mask[: len(ids)] = 1
        positions = np.zeros(max_sentences, np.int32)
        positions[: len(cls_positions)] = cls_positions
        sentence_mask = np.zeros(max_sentences, np.float32)
        sentence_mask[: len(cls_positions)] = 1
        labels = np.zeros(max_sentences, np.float32)
        labels[oracle] = 1
        for key, value in (("input_ids", input_ids), ("token_type_ids", token_types), ("attention_mask", mask),
                           ("cls_positions", positions), ("sentence_mask", sentence_mask), ("labels", labels)):
            rows[key].append(value)
    arrays = {k: np.stack(v) for k, v in rows.items()}
    arrays["document_index"] = np.arange(len(documents), dtype=np.int32)
    log.info(
        "%s: %d documents; %d longer than max_seq_length=%d, dropping %d sentences that cannot be selected",
        what, len(documents), num_docs_cut, max_seq_length, num_sentences_dropped,
    )
    return SummarizationFeatures(arrays, np.asarray(kept_counts, np.int32))


class SentenceScoreHead(nn.Module):
    """A linear scorer (`classifier/`) on each sentence's [CLS] row: cls_positions [batch,
    sentences] -> sentence_logits [batch, sentences] (every position when None)."""

    config: BertConfig

    @nn.compact
    def __call__(self, encoder, inputs: EncoderInputs, deterministic: bool, cls_positions=None) -> dict:
        out = encoder(*inputs, deterministic=deterministic)
        sequence = out["sequence_output"]  # [batch, length, embed]
        if cls_positions is not None:
            sequence = gather_positions(sequence, cls_positions)  # [batch, sentences, embed]
        logits = logits_dense(self.config, 1, "classifier")(sequence)[..., 0]
        return {**out, "sentence_logits": logits}


class BertForExtractiveSummarization(BertWithHead):
    """The encoder with SentenceScoreHead composed onto it (BertSum's extractive model)."""

    def make_head(self):
        return SentenceScoreHead(self.config)


class SummarizationTask(features_lib.ArrayFeaturesTask, Task):
    main_metric = "rouge2"
    higher_is_better = True

    def __init__(self, *, tokenizer, train_documents, eval_documents, max_seq_length: int = 512,
                 summary_size: int = 3, oracle_size: int = 3, block_trigrams: bool = True):
        self.tokenizer = tokenizer
        self.train_documents = list(train_documents)
        self.eval_documents = list(eval_documents)
        self.max_seq_length = max_seq_length
        self.summary_size = summary_size
        self.oracle_size = oracle_size
        self.block_trigrams = block_trigrams
        self._train_features = None
        self._eval_features = None

    @property
    def train_features(self) -> SummarizationFeatures:
        if self._train_features is None:
            self._train_features = build_features(self.tokenizer, self.train_documents, self.max_seq_length, self.oracle_size, "summarisation train")
        return self._train_features

    @property
    def eval_features(self) -> SummarizationFeatures:
        if self._eval_features is None:
            self._eval_features = build_features(self.tokenizer, self.eval_documents, self.max_seq_length, self.oracle_size, "summarisation eval")
        return self._eval_features

    @property
    def num_train_examples(self) -> int:
        return len(self.train_documents)

    def make_model(self, bert_config):
        features_lib.check_vocab(self.tokenizer, bert_config)
        return BertForExtractiveSummarization(bert_config)

    def _logits(self, model, params, batch, deterministic, dropout_rng=None):
        out = features_lib.apply_model(model, params, batch, deterministic, dropout_rng,
                                       cls_positions=batch["cls_positions"])
        return out["sentence_logits"].astype("float32")  # [batch, sentences]

    def loss_and_metrics(self, model, params, batch, dropout_rng):
        import jax.numpy as jnp
        import optax

        logits = self._logits(model, params, batch, False, dropout_rng)
        weights = batch["sentence_mask"] * batch["example_weight"][:, None]
        per_sentence = optax.sigmoid_binary_cross_entropy(logits, batch["labels"])
        loss = (per_sentence * weights).sum() / jnp.maximum(weights.sum(), 1.0)
        return loss, {"loss": loss}

    def predict(self, model, params, batch):
        return {"sentence_scores": self._logits(model, params, batch, True)}

    def summaries(self, predictions, batches) -> list[list[int]]:
        """Chosen sentence indices per eval document."""
        kept = self.eval_features.num_sentences_kept
        chosen = [[] for _ in self.eval_documents]
        for p, batch in zip(predictions, batches):
            real = np.asarray(batch["example_weight"]) > 0
            for scores, d in zip(np.asarray(p["sentence_scores"])[real], np.asarray(batch["document_index"])[real]):
                document = self.eval_documents[d]
                chosen[d] = select_sentences(scores[: kept[d]], document.sentences, self.summary_size, self.block_trigrams)
        return chosen

    def evaluate(self, predictions, batches) -> dict:
        chosen = self.summaries(predictions, list(batches))
        predicted = ["\n".join(doc.sentences[i] for i in picks) for doc, picks in zip(self.eval_documents, chosen)]
        result = rouge_scores(predicted, [doc.summary for doc in self.eval_documents])
        return {k: float(v) for k, v in result.items()}

    def write_predictions(self, predictions, batches, path) -> None:
        chosen = self.summaries(predictions, list(batches))
        epath.Path(path).write_text("".join(  # through etils.epath: `path` may be in a gs:// workdir
            json.dumps({"guid": doc.guid, "selected": picks, "summary": [doc.sentences[i] for i in picks]}) + "\n"
            for doc, picks in zip(self.eval_documents, chosen)), encoding="utf-8")


def from_config(config) -> SummarizationTask:
    """The task of experiments/finetune_summarization.py (registry name "summarization")."""
    from bert_jax.tasks import finetuning

    tokenizer = finetuning.load_tokenizer(config)
    t = config.task
    if t.tfds_name:
        if t.tfds_name != "cnn_dailymail":
            raise ValueError(f"config.task.tfds_name: only cnn_dailymail is supported, found {t.tfds_name!r}")
        train = read_tfds("train", t.tfds_data_dir or None, max_documents=int(t.max_train_documents) or None)
        evaluation = read_tfds("validation", t.tfds_data_dir or None, max_documents=int(t.max_eval_documents) or None)
    else:
        train = read_jsonl(finetuning.data_path(config.train_file, "train_file"))
        if t.max_train_documents:
            train = train[: int(t.max_train_documents)]
        evaluation = read_jsonl(finetuning.data_path(config.eval_file, "eval_file"))
        if t.max_eval_documents:
            evaluation = evaluation[: int(t.max_eval_documents)]
    task = SummarizationTask(
        tokenizer=tokenizer, train_documents=train, eval_documents=evaluation, max_seq_length=int(config.max_seq_length),
        summary_size=int(t.summary_size), oracle_size=int(t.oracle_size), block_trigrams=bool(t.block_trigrams),
    )
    finetuning.resolve(config, tokenizer, task.num_train_examples)
    return task
