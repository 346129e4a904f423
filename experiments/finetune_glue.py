"""Fine-tune on a GLUE task (Wang et al. 2019) with the BERT paper's recipe.

    python -m bert_jax.main --config experiments/finetune_glue.py:sst2 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_glue.py:mnli --workdir W --config.init_from=PATH \
        --config.task.data_dir=/path/to/glue_data/MNLI          # GLUE's own TSV files instead of TFDS
    python -m bert_jax.tasks.glue --workdir W                     # test-set files for the GLUE server

arg: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli. Data come from TFDS `glue/<arg>`
(--config.task.tfds_data_dir for a prepared TFDS directory) unless task.data_dir names a
directory of GLUE TSV files. `--config.task.head=bilstm` puts a randomly initialised BiLSTM between
the encoder and the classifier (the paper's Table 5 "+ BiLSTM"). Metrics: CoLA Matthews corr.; SST-2 accuracy; MRPC F1 + accuracy;
STS-B Pearson + Spearman; QQP accuracy + F1; MNLI matched + mismatched accuracy; QNLI, RTE,
WNLI accuracy. The first one named is the main metric, by which the best checkpoint is kept.

Recipe (Devlin et al. 2019): max_seq_length 128, AdamW with weight decay 0.01, 10% warmup then
linear decay, dropout 0.1, 3 epochs, batch 32, lr 2e-5; config.sweep holds the paper's grid
(lr {5e-5, 3e-5, 2e-5} x batch {16, 32} x epochs {2, 3, 4}), the best dev result wins.
"""

from bert_jax.tasks import finetuning, glue


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli")


def get_config(arg: str = "sst2"):
    spec = glue.get_spec(arg)
    config = finetuning.base_config("glue", max_seq_length=128)
    config.task.glue_task = spec.tfds_name
    config.task.data_dir = ""  # a directory of GLUE TSV files (train.tsv, dev.tsv, test.tsv); "" = TFDS
    config.task.tfds_data_dir = ""  # "" = TFDS's default data directory
    finetuning.add_head_fields(config)  # task.head: "linear" (BERT's) or "bilstm" (the paper's Table 5)
    return config
