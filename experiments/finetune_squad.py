"""Fine-tune on SQuAD v1.1 or v2.0 (Rajpurkar et al. 2016, 2018) as google-research/bert's run_squad.py.

    python -m bert_jax.main --config experiments/finetune_squad.py:v1.1 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_squad.py:v2.0 --workdir W --config.init_from=PATH \
        --config.train_file=train-v2.0.json --config.eval_file=dev-v2.0.json     # the official JSON

arg: v1.1 or v2.0. Data: TFDS `squad/<arg>` unless train_file/eval_file name official JSON files.
Features: max_seq_length 384, doc_stride 128, max_query_length 64; post-processing: n-best 20,
max_answer_length 30, v2.0 null answers when null - best span > null_score_diff_threshold (0).
Metrics are the official evaluate-v1.1.py / evaluate-v2.0.py ones, on the files written to the
workdir: predictions.json ({qid: answer}), nbest_predictions.json and, for v2.0, null_odds.json
(evaluate-v2.0.py --na-prob-file). v2.0 also reports span_best_f1_thresh: the
null_score_diff_threshold that maximises F1 over every question's best span (the official
best_f1_thresh can only look below the threshold the answers were cut at).
Recipe: lr 3e-5, batch 32, 2 epochs (v1.1; the paper's SQuAD setting), warmup 10%.
`--config.task.head=bilstm` puts a randomly initialised BiLSTM between the encoder and the span
layer (the paper's Table 5 "+ BiLSTM").
"""

from bert_jax.tasks import finetuning


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("v1.1", "v2.0")


def get_config(arg: str = "v1.1"):
    if arg not in ("v1.1", "v2.0"):
        raise ValueError(f"experiments/finetune_squad.py: expected v1.1 or v2.0, got {arg!r}")
    config = finetuning.base_config("squad", max_seq_length=384, learning_rate=3e-5, batch_size=32, num_epochs=2)
    config.train_file = ""  # official JSON; "" = TFDS squad/<version>
    config.eval_file = ""
    config.task.version = arg
    config.task.tfds_data_dir = ""
    config.task.doc_stride = 128
    config.task.max_query_length = 64
    config.task.n_best_size = 20
    config.task.max_answer_length = 30
    config.task.null_score_diff_threshold = 0.0
    config.train.eval_batch_size = 32
    finetuning.add_head_fields(config)  # task.head: "linear" (BERT's) or "bilstm" (the paper's Table 5)
    return config
