"""Fine-tune for named-entity recognition (token classification) as in the BERT paper (section 5.3).

    python -m bert_jax.main --config experiments/finetune_ner.py:conll2003 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_ner.py:wnut16 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_ner.py --workdir W --config.init_from=PATH \
        --config.train_file=train.conll --config.eval_file=dev.conll

arg: conll2003 (TFDS `conll2003`, dev split), wnut16 ($BERT_JAX_DATA/ner/wnut16), or "" with
train_file/eval_file in CoNLL format (token<TAB>tag, BIO or IOB1). A word's label sits on its
first sub-token; the rest are ignored in the loss. Scores: entity-level precision/recall/F1 as
conlleval counts them (main metric f1), plus per-type F1 and token accuracy.
Recipe: max_seq_length 128, lr 5e-5, batch 32, 3 epochs, 10% warmup, dropout 0.1; cased models
should set --config.lowercase=False (the paper used cased BERT for NER).
"""

from bert_jax.tasks import finetuning

PRESETS = {
    "": ("", "", ""),
    "conll2003": ("", "", "conll2003"),
    "wnut16": ("$BERT_JAX_DATA/ner/wnut16/train.conll", "$BERT_JAX_DATA/ner/wnut16/dev.conll", ""),
}


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("", "conll2003", "wnut16")


def get_config(arg: str = ""):
    if arg not in PRESETS:
        raise ValueError(f"experiments/finetune_ner.py: unknown preset {arg!r}; expected one of {sorted(PRESETS)}")
    config = finetuning.base_config("ner", max_seq_length=128, learning_rate=5e-5)
    config.train_file, config.eval_file, tfds_name = PRESETS[arg]
    config.task.tfds_name = tfds_name  # "conll2003" reads TFDS instead of the files
    config.task.tfds_eval_split = "dev"
    config.task.tfds_data_dir = ""
    return config
