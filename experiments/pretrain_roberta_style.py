"""RoBERTa-style pretraining (Liu et al. 2019): no NSP, dynamic masking, FULL-SENTENCES inputs.

    python -m data_pipelines.create_pretraining_data --input_file 'corpus/*.txt' --output_dir data/full_512 \
        --vocab_file vocab.txt --max_seq_length 512 --mode full_sentences --no_masking
    python -m bert_jax.main --config experiments/pretrain_roberta_style.py:base --workdir DIR \
        --config.data.input_files='data/full_512/*.array_record' --config.data.vocab_file=vocab.txt

arg: a model preset (tiny ... large). The inputs are contiguous sentences packed across
document boundaries up to 512 tokens (FULL-SENTENCES, made at creation time with
`--mode full_sentences`; `doc_sentences` keeps documents apart), written unmasked and masked
anew every epoch at load time. The optimizer follows RoBERTa's Table 9 for BASE: batch 8k,
peak lr 6e-4, Adam b2 0.98, eps 1e-6, weight decay 0.01, 24k warmup steps, 500k steps.
Everything else is experiments/pretrain.py, imported rather than copied.
"""

from experiments import pretrain

DOCUMENTED_ARGS = ("tiny", "mini", "small", "medium", "base", "large")

SEQ_LEN = 512
MAX_PREDICTIONS = 77  # ceil(0.15 * 512)


def get_config(arg: str = "base"):
    if "," in arg:
        raise ValueError(f"experiments/pretrain_roberta_style.py: expected a bare preset, got {arg!r}")
    config = pretrain.get_config(arg)
    config.data.next_sentence_prediction = False
    config.data.dynamic_masking = True
    config.data.max_seq_length = SEQ_LEN
    config.data.max_predictions_per_seq = MAX_PREDICTIONS
    config.task.seq_len = SEQ_LEN
    config.task.max_predictions_per_seq = MAX_PREDICTIONS
    config.train.batch_size = 8192
    config.train.num_steps = 500_000
    config.optimizer.learning_rate = 6e-4
    config.optimizer.b2 = 0.98
    config.optimizer.warmup_steps = 24_000
    return config
