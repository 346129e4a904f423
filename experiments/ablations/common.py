"""What the ablation files share: the data, the tiny-model budget and the fine-tuning evaluation.

Each variant pretrains a model from scratch on `$BERT_JAX_DATA/corpus` (22 MB of real
prose, bert-base-uncased WordPiece), then fine-tunes it on Rotten Tomatoes sentiment, whose dev
accuracy is the ablation's downstream number. The budget is sized for a 2-core CPU (a few
minutes a variant); on an accelerator raise `train.num_steps` and `train.batch_size` in
PRETRAIN_BUDGET, or pass a bigger model preset.
"""

VOCAB = "$BERT_JAX_DATA/vocab/bert-base-uncased-vocab.txt"
CORPUS = "$BERT_JAX_DATA/corpus/*.txt"

PRETRAIN_BUDGET = {
    "train.batch_size": 64,
    "train.num_steps": 600,
    "train.log_every": 50,
    "optimizer.learning_rate": 1e-3,  # a tiny model at batch 64 tolerates more than the paper's 1e-4
    "optimizer.warmup_steps": 60,
    "checkpoint.every_steps": 200,
    "checkpoint.keep": 1,
}

FINETUNE_BUDGET = {
    "train.batch_size": 32,
    "num_epochs": 2,
    "optimizer.learning_rate": 1e-4,
    "max_seq_length": 64,
}


def create_instances(*extra_args: str) -> list[str]:
    """`python -m` arguments that build pretraining instances of the corpus into {out}."""
    return [
        "data_pipelines.create_pretraining_data",
        "--input_file", CORPUS,
        "--output_dir", "{out}",
        "--vocab_file", VOCAB,
        "--max_seq_length", "128",
        "--dupe_factor", "1",
        *extra_args,
    ]


def sweep(variants: dict, *, prepare: dict | None = None, common: dict | None = None, preset: str = "tiny") -> dict:
    """A pretrain-then-fine-tune sweep over `variants` (dicts of config overrides)."""
    return {
        "prepare": prepare if prepare is not None else {"instances": create_instances()},
        "pretrain": f"experiments/pretrain.py:{preset}",
        "common": {
            "data.input_files": "{data}/instances/*.array_record",
            "data.vocab_file": VOCAB,
            **PRETRAIN_BUDGET,
            **(common or {}),
        },
        "variants": variants,
        "finetune": "experiments/finetune_tsv.py:rotten_tomatoes",
        "finetune_common": dict(FINETUNE_BUDGET),
        "seeds": [0],
    }
