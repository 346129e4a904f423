"""Real pretrained weights: sentence-transformers all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT
in Hugging Face BertModel layout) loaded with `load_pretrained`.

Token embeddings must match transformers' PyTorch BertModel on the same directory, and the
mean-pooled sentence embeddings (the model's own pooling, 1_Pooling/config.json) must tell a
King James / World English Bible paraphrase pair from an unrelated sentence. Inputs come from
transformers' tokenizer for this directory (tokenizer.json), so only the model is under test.
Run with `-s` to see the measured figures.
"""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from bert_jax import load_pretrained  # noqa: E402
from bert_jax.modeling import BertModel  # noqa: E402
from tests.tolerances import FORWARD_REL, check_bound, scaled_diff  # noqa: E402


@pytest.fixture(scope="module")
def minilm(shared_data):
    directory = shared_data / "models" / "all-MiniLM-L6-v2"
    config, params = load_pretrained(directory)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    return directory, config, params, tokenizer


@pytest.fixture(scope="module")
def bible_rows(shared_data):
    with open(shared_data / "paraphrase" / "bible" / "dev.tsv", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def encode(minilm, sentences):
    _, config, params, tokenizer = minilm
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    out = BertModel(config).apply(
        {"params": params["bert"]},
        jnp.asarray(batch["input_ids"]),
        jnp.asarray(batch["token_type_ids"]),
        jnp.asarray(batch["attention_mask"]),
    )
    return batch, np.asarray(out["sequence_output"])


def sentence_embeddings(minilm, sentences) -> np.ndarray:
    """Mask-aware mean over tokens, then L2 normalisation (sentence-transformers' recipe)."""
    batch, tokens = encode(minilm, sentences)
    mask = batch["attention_mask"][..., None].astype(np.float32)
    mean = (tokens * mask).sum(1) / mask.sum(1)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def test_loads_as_bert_model_without_heads(minilm):
    _, config, params, _ = minilm
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (6, 384, 12)
    assert set(params) == {"bert"}  # BertModel keys: encoder and pooler, no MLM/NSP heads
    assert "pooler" in params["bert"]


def test_token_embeddings_match_transformers(minilm, bible_rows):
    directory = minilm[0]
    sentences = [bible_rows[i][col] for i in range(4) for col in ("sentence_a", "sentence_b")]
    batch, ours = encode(minilm, sentences)
    assert batch["attention_mask"].min() == 0  # the batch has padding
    reference = transformers.BertModel.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v) for k, v in batch.items()})
    real = batch["attention_mask"].astype(bool)
    diff_real = scaled_diff(ours[real], theirs.last_hidden_state.numpy()[real])
    diff_all = scaled_diff(ours, theirs.last_hidden_state.numpy())
    print(f"\n[minilm] {len(sentences)} sentences, {int(real.sum())} real tokens: token embeddings "
          f"max|diff| / max|value| {diff_real:.2e} (real positions), {diff_all:.2e} (all positions incl. padding)")
    check_bound("all positions", diff_all, FORWARD_REL)


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 3}


def test_mean_pooled_embeddings_separate_paraphrase_from_unrelated(minilm, bible_rows):
    # The paraphrase: the first label-1 row (the same verse in two translations).
    pair = next(r for r in bible_rows if r["label"] == "1")
    # Unrelated: the first other row's sentence sharing no content word (> 3 letters) with it.
    words = _content_words(pair["sentence_a"]) | _content_words(pair["sentence_b"])
    unrelated = next(r["sentence_a"] for r in bible_rows if r is not pair and not _content_words(r["sentence_a"]) & words)
    a, b, c = sentence_embeddings(minilm, [pair["sentence_a"], pair["sentence_b"], unrelated])
    paraphrase_cos, unrelated_cos = float(a @ b), float(a @ c)
    print(f"\n[minilm] paraphrase cosine {paraphrase_cos:.3f}: {pair['sentence_a'][:50]!r} / {pair['sentence_b'][:50]!r}")
    print(f"[minilm] unrelated cosine {unrelated_cos:.3f}: {unrelated[:50]!r}")
    assert paraphrase_cos > 0.6
    assert unrelated_cos < 0.3


@pytest.mark.slow  # 128 long verses through 6 layers: ~10 s of CPU
def test_paraphrases_score_higher_than_non_paraphrases_on_dev(minilm, bible_rows):
    """Beyond one pair: on the first 64 dev rows, label-1 pairs (same verse) score above
    label-0 pairs (different verses) by a wide margin."""
    rows = bible_rows[:64]
    emb_a = sentence_embeddings(minilm, [r["sentence_a"] for r in rows])
    emb_b = sentence_embeddings(minilm, [r["sentence_b"] for r in rows])
    cos = (emb_a * emb_b).sum(-1)
    labels = np.array([int(r["label"]) for r in rows])
    pos, neg = cos[labels == 1], cos[labels == 0]
    auc = float(np.mean(pos[:, None] > neg[None, :]))  # ROC AUC of cosine as a paraphrase score
    print(f"\n[minilm] first 64 dev rows: label-1 cosine median {np.median(pos):.3f} (min {pos.min():.3f}, n={len(pos)}), "
          f"label-0 median {np.median(neg):.3f} (max {neg.max():.3f}, n={len(neg)}), ROC AUC {auc:.3f}")
    assert len(pos) >= 10 and len(neg) >= 10
    # Different verses of one book still share topics (label-0 median is about 0.34), so the
    # check is the gap, not an absolute bound on the negatives.
    assert np.median(pos) > 0.6 and np.median(pos) - np.median(neg) > 0.3
    assert auc > 0.95
