"""The pretraining data config: its fields, their defaults and the checks a run makes at start.

Data config fields (`default_data_config()`; defaults are the BERT paper's values):
  input_files              glob(s) of Google-format ArrayRecord or TFRecord files, comma-separated;
                           may hold {max_seq_length}
  tfds_name                or a TFDS dataset by name (array_record), with the same features
  tfds_split, tfds_data_dir
  max_seq_length           128 (phase 1) or 512 (phase 2)
  max_predictions_per_seq  20 at 128, 80 at 512; the width of the masked_lm_* features
  next_sentence_prediction True; False for RoBERTa-style training (required by packing)
  dynamic_masking          False = the masks in the files (static, Google); True = a new mask
                           every epoch, a function of (seed, epoch, record index) (RoBERTa)
  unmasked                 False; True = the tokens as written, with no masked positions, for
                           an objective that makes its own targets (the left-to-right LM); the
                           files must be written unmasked (create_pretraining_data --no_masking)
  masked_lm_prob           0.15 (0.3 for MosaicBERT); dynamic masking only
  mask_token_prob, random_token_prob   0.8, 0.1; dynamic masking only
  whole_word_masking       False; dynamic masking only (needs vocab_file)
  mask_count_includes_specials  True = Google's count of predictions, round(len(tokens) * p)
                           with [CLS]/[SEP]; False = p times the non-special tokens
  vocab_file               vocab.txt or SentencePiece .model: [MASK], specials, "##" continuations
  packing                  False; True packs short examples into rows (`packing.py`)
  shuffle                  True: a new permutation of all records every epoch
  prefetch_batches         2: batches prepared ahead in a background thread (0 = none)
"""

from __future__ import annotations

from typing import Any

import ml_collections

from data_pipelines import masking


def default_data_config() -> ml_collections.ConfigDict:
    """The pretraining data fields, with the BERT paper's values."""
    return ml_collections.ConfigDict({
        "input_files": "",
        "tfds_name": "",
        "tfds_split": "train",
        "tfds_data_dir": "",
        "max_seq_length": 128,
        "max_predictions_per_seq": 20,
        "next_sentence_prediction": True,
        "dynamic_masking": False,
        "unmasked": False,
        "masked_lm_prob": masking.MASKED_LM_PROB,
        "mask_token_prob": masking.MASK_TOKEN_PROB,
        "random_token_prob": masking.RANDOM_TOKEN_PROB,
        "whole_word_masking": False,
        "mask_count_includes_specials": True,
        "vocab_file": "",
        "packing": False,
        "shuffle": True,
        "prefetch_batches": 2,
    })


def resolve_data_config(data_config: Any) -> ml_collections.ConfigDict:
    """Fills defaults and refuses unknown (misspelled) fields and contradictory settings."""
    config = default_data_config()
    given = dict(data_config.items()) if data_config is not None else {}
    unknown = sorted(set(given) - set(config))
    if unknown:
        raise ValueError(f"data config has unknown field(s) {unknown}; known fields: {sorted(config)}")
    for key, value in given.items():
        config[key] = value
    if bool(config.input_files) == bool(config.tfds_name):
        raise ValueError("data config needs exactly one of input_files (TFRecord globs) or tfds_name; got "
                         f"input_files={config.input_files!r}, tfds_name={config.tfds_name!r}")
    if config.packing and config.next_sentence_prediction:
        raise ValueError("packing=True puts several examples in one row, which then has no single "
                         "next_sentence_label: set next_sentence_prediction=False (RoBERTa-style) or packing=False")
    if config.unmasked and config.dynamic_masking:
        raise ValueError("unmasked=True reads the tokens with no masks, dynamic_masking=True masks them at load "
                         "time: set one of them")
    if not config.dynamic_masking:
        defaults = default_data_config()
        changed = [k for k in ("masked_lm_prob", "mask_token_prob", "random_token_prob", "whole_word_masking",
                               "mask_count_includes_specials") if config[k] != defaults[k]]
        if changed:
            raise ValueError(f"{changed} take effect only with dynamic_masking=True; static masks come from the "
                             "files (set them in create_pretraining_data instead)")
    elif not config.vocab_file:
        raise ValueError("dynamic_masking=True needs vocab_file (for the [MASK] id, the special tokens and words)")
    masking.validate_masking_args(config.masked_lm_prob, config.max_predictions_per_seq,
                                  config.mask_token_prob, config.random_token_prob)
    return config
