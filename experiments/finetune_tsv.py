"""Fine-tune on any local TSV (classification or regression), with no code to write.

    python -m bert_jax.main --config experiments/finetune_tsv.py --workdir W \
        --config.train_file=train.tsv --config.eval_file=dev.tsv --config.init_from=PATH

A file's header names its columns: `sentence` (or `sentence_a` and `sentence_b`) and `label`;
other names through --config.task.text_a_column / text_b_column / label_column, and a
headerless file through --config.task.column_names=label,sentence_a,sentence_b. String labels
are mapped automatically (sorted; the order is written to config.task.labels in results.json);
a non-integer numeric label column means regression (task_type auto|classification|regression).

arg (optional) presets the data files:
  sentiment        the quickstart's Rotten Tomatoes sample in data/quickstart (4,000 train / 1,780 dev)
  rotten_tomatoes  $BERT_JAX_DATA/sentiment/rotten_tomatoes (9,731 / 1,780), `sentence<TAB>label`
  bible            $BERT_JAX_DATA/paraphrase/bible (20,000 / 2,000), `label<TAB>sentence_a<TAB>sentence_b`
`,head=bilstm` after the arg (e.g. `sentiment,head=bilstm`, `bible,head=bilstm`) fine-tunes with a
randomly initialised BiLSTM between the encoder and the classifier, which reads concat(final
forward state, final backward state): the paper's Table 5 "+ BiLSTM" row; the same as
--config.task.head=bilstm (sizes: --config.task.bilstm_hidden_size, default the encoder's hidden
size; --config.task.bilstm_layers, default 2). Such a run cannot be exported to Hugging Face.
Recipe (Devlin et al. 2019): AdamW, 10% warmup then linear decay, dropout 0.1, weight decay
0.01, max_seq_length 128; the grid lr {5e-5, 3e-5, 2e-5} x batch {16, 32} x epochs {2, 3, 4} is
in config.sweep.
"""

import pathlib

from bert_jax.tasks import finetuning

REPO = pathlib.Path(__file__).resolve().parents[1]

PRESETS = {
    "": ("", ""),
    "sentiment": (str(REPO / "data/quickstart/sentiment_train.tsv"), str(REPO / "data/quickstart/sentiment_dev.tsv")),
    "rotten_tomatoes": ("$BERT_JAX_DATA/sentiment/rotten_tomatoes/train.tsv", "$BERT_JAX_DATA/sentiment/rotten_tomatoes/dev.tsv"),
    "bible": ("$BERT_JAX_DATA/paraphrase/bible/train.tsv", "$BERT_JAX_DATA/paraphrase/bible/dev.tsv"),
}


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("", "sentiment", "rotten_tomatoes", "bible", "sentiment,head=bilstm", "rotten_tomatoes,head=bilstm",
                   "bible,head=bilstm")


def get_config(arg: str = ""):
    preset, *options = arg.split(",")
    if preset not in PRESETS:
        raise ValueError(f"experiments/finetune_tsv.py: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    for option in options:
        if option != "head=bilstm":
            raise ValueError(f"experiments/finetune_tsv.py:{arg}: unknown option {option!r}; expected head=bilstm")
    config = finetuning.base_config("tsv", max_seq_length=128)
    config.train_file, config.eval_file = PRESETS[preset]
    finetuning.add_head_fields(config)
    if options:
        config.task.head = "bilstm"
    config.task.text_a_column = ""  # "" = sentence, else sentence_a / sentence1
    config.task.text_b_column = ""  # "" = sentence_b / sentence2 when present
    config.task.label_column = "label"
    config.task.column_names = ""  # for headerless files, e.g. "label,sentence_a,sentence_b"
    config.task.task_type = "auto"
    config.task.labels = ""  # "" = the sorted training labels
    return config
