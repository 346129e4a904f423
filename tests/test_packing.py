import numpy as np
import pytest

from data_pipelines.masking import MaskingVocab, mask_batch
from data_pipelines.packing import (
    example_lengths,
    pack_examples,
    packing_efficiency,
    plan_first_fit,
    unpack_row,
)

LENGTH, PREDICTIONS = 64, 12


def _examples(n, seed=0):
    """n padded `[CLS] A [SEP] B [SEP]` examples of random lengths, masked Google-style."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, LENGTH), np.int32)
    segments = np.zeros((n, LENGTH), np.int32)
    for i in range(n):
        length = int(rng.integers(5, LENGTH + 1))
        a = int(rng.integers(1, length - 3)) if length > 4 else 1
        body = rng.integers(1000, 30000, length)
        body[0], body[a + 1], body[length - 1] = 101, 102, 102
        ids[i, :length] = body
        segments[i, a + 2:length] = 1
    vocab = MaskingVocab.from_tokens(["[PAD]"] + [f"t{i}" for i in range(1, 101)] + ["[CLS]", "[SEP]", "[MASK]"]
                                     + [f"w{i}" for i in range(104, 30522)])
    masked = mask_batch(ids, None, vocab, rng=rng, max_predictions_per_seq=PREDICTIONS)
    return {"original_ids": ids, "input_mask": (ids != 0).astype(np.int32), "segment_ids": segments, **masked}


def _pack_all(examples, num_rows):
    """Packs the whole stream batch after batch, as the input pipeline does."""
    lengths = example_lengths(examples["input_mask"])
    predictions = (examples["masked_lm_weights"] > 0).sum(axis=1)
    batches, cursor = [], 0
    while cursor < len(lengths):
        rows = plan_first_fit(lengths[cursor:], predictions[cursor:], num_rows, LENGTH, PREDICTIONS)
        part = {k: v[cursor:] for k, v in examples.items()}
        batches.append((cursor, rows, pack_examples(part, rows, num_rows, LENGTH, PREDICTIONS)))
        cursor += len(rows)
    return batches


def test_unpacking_recovers_every_example_in_order():
    examples = _examples(300)
    batches = _pack_all(examples, num_rows=8)
    recovered = []
    for cursor, rows, packed in batches:
        per_row = [unpack_row({k: v[r] for k, v in packed.items()}) for r in range(8)]
        # Examples come back in stream order within each row (first fit keeps the order).
        taken = [0] * 8
        for i, row in enumerate(rows):
            recovered.append((cursor + i, per_row[row][taken[row]]))
            taken[row] += 1
        assert taken == [len(x) for x in per_row]
    assert [i for i, _ in recovered] == list(range(300))
    for i, got in recovered:
        n = int(examples["input_mask"][i].sum())
        np.testing.assert_array_equal(got["input_ids"], examples["input_ids"][i, :n])
        np.testing.assert_array_equal(got["segment_ids"], examples["segment_ids"][i, :n])
        np.testing.assert_array_equal(got["position_ids"], np.arange(n))  # positions restart
        w = examples["masked_lm_weights"][i] > 0
        np.testing.assert_array_equal(got["masked_lm_positions"], examples["masked_lm_positions"][i][w])
        np.testing.assert_array_equal(got["masked_lm_ids"], examples["masked_lm_ids"][i][w])
        # The labels are the original tokens at those positions.
        np.testing.assert_array_equal(got["masked_lm_ids"], examples["original_ids"][i][got["masked_lm_positions"]])


def test_packed_attention_is_the_block_diagonal_of_the_examples():
    examples = _examples(120, seed=1)
    lengths = example_lengths(examples["input_mask"])
    for cursor, rows, packed in _pack_all(examples, num_rows=4):
        for r in range(4):
            seg = packed["packed_segment_ids"][r]
            allowed = (seg[:, None] == seg[None, :]) & (seg[:, None] > 0)
            expected = np.zeros((LENGTH, LENGTH), bool)
            start = 0
            for i in np.flatnonzero(rows == r):
                n = lengths[cursor + i]
                expected[start:start + n, start:start + n] = True  # each example sees itself only
                start += n
            np.testing.assert_array_equal(allowed, expected)
            np.testing.assert_array_equal(packed["input_mask"][r], seg > 0)
            # Masked positions land on the masked tokens of the row.
            w = packed["masked_lm_weights"][r] > 0
            assert (packed["masked_lm_positions"][r][w] < start).all()


def test_first_fit_respects_budgets_and_closes_at_the_first_misfit():
    examples = _examples(200, seed=2)
    lengths = example_lengths(examples["input_mask"])
    predictions = (examples["masked_lm_weights"] > 0).sum(axis=1)
    efficiencies = []
    for cursor, rows, packed in _pack_all(examples, num_rows=6):
        for r in range(6):
            assert lengths[cursor:][:len(rows)][rows == r].sum() <= LENGTH
            assert predictions[cursor:][:len(rows)][rows == r].sum() <= PREDICTIONS
        nxt = cursor + len(rows)
        if nxt < len(lengths):  # the example that closed the batch fits in no row
            used = np.bincount(rows, weights=lengths[cursor:nxt], minlength=6)
            used_p = np.bincount(rows, weights=predictions[cursor:nxt], minlength=6)
            assert ((used + lengths[nxt] > LENGTH) | (used_p + predictions[nxt] > PREDICTIONS)).all()
            efficiencies.append(packing_efficiency(packed))
        # First fit: an example never goes to a later row when an earlier one had room.
        used = np.zeros(6)
        used_p = np.zeros(6)
        for i, r in enumerate(rows):
            n, p = lengths[cursor + i], predictions[cursor + i]
            earlier = (used[:r] + n <= LENGTH) & (used_p[:r] + p <= PREDICTIONS)
            assert not earlier.any()
            used[r] += n
            used_p[r] += p
    # Examples average ~34 of 64 tokens: unpacked rows would be ~53% real tokens.
    assert np.mean(efficiencies) > 0.8, np.mean(efficiencies)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="example 1 has 70 tokens"):
        plan_first_fit(np.array([10, 70]), np.array([1, 1]), 2, LENGTH, PREDICTIONS)
    with pytest.raises(ValueError, match="example 2 is not real tokens followed by padding"):
        example_lengths(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]]))
