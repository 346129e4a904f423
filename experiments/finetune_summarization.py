"""Extractive summarisation, BertSum-style (Liu 2019): score each sentence from its [CLS] vector.

    python -m bert_jax.main --config experiments/finetune_summarization.py:cnn_dailymail --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_summarization.py --workdir W --config.init_from=PATH \
        --config.train_file=train.jsonl --config.eval_file=dev.jsonl    # {"sentences": [...], "summary": "..."}

Oracle labels: greedy ROUGE-1 + ROUGE-2 selection of up to 3 sentences. Prediction: the top 3
sentences with trigram blocking. Scores: ROUGE-1/2/L/Lsum F1 (rouge-score, stemmed); main
metric rouge2. Inputs are cut at max_seq_length 512 (BertSum's limit; counted in the log).
BertSum's recipe: 50,000 steps, batch ~36 documents, lr 2e-3 with warmup 10,000 (Noam
schedule); here AdamW with 10% warmup and linear decay, lr 2e-5 by default, 3 epochs.
"""

from bert_jax.tasks import finetuning


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("", "cnn_dailymail")


def get_config(arg: str = ""):
    if arg not in ("", "cnn_dailymail"):
        raise ValueError(f"experiments/finetune_summarization.py: expected '' or cnn_dailymail, got {arg!r}")
    config = finetuning.base_config("summarization", max_seq_length=512, batch_size=16)
    config.train_file = ""
    config.eval_file = ""
    config.task.tfds_name = arg  # "cnn_dailymail" reads TFDS instead of the files
    config.task.tfds_data_dir = ""
    config.task.max_train_documents = 0  # 0 = all (CNN/DM train has 287,113; the oracle costs ~ms each)
    config.task.max_eval_documents = 0  # 0 = all (the CNN/DM validation split has 13,368)
    config.task.summary_size = 3
    config.task.oracle_size = 3
    config.task.block_trigrams = True
    config.train.eval_batch_size = 16
    return config
