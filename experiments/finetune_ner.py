"""Fine-tune for named-entity recognition (token classification) as in the BERT paper (section 5.3).

    python -m bert_jax.main --config experiments/finetune_ner.py:conll2003 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_ner.py:wnut16 --workdir W --config.init_from=PATH
    python -m bert_jax.main --config experiments/finetune_ner.py --workdir W --config.init_from=PATH \
        --config.train_file=train.conll --config.eval_file=dev.conll
    python -m bert_jax.main --config experiments/finetune_ner.py:wnut16,features=concat_last_four --workdir W ...

arg: conll2003 (TFDS `conll2003`, dev split), wnut16 ($BERT_JAX_DATA/ner/wnut16), or "" with
train_file/eval_file in CoNLL format (token<TAB>tag, BIO or IOB1), optionally followed by
  ,head=bilstm       fine-tuning with a randomly initialised BiLSTM between the encoder and the
                     classifier (config.task.head='bilstm'; the paper's Table 5 "+ BiLSTM")
  ,features=MODE     the feature-based mode of the paper's Table 7 (ELMo-style): the encoder frozen
                     (config.optimizer.frozen_params='^bert/'), its hidden states combined by MODE
                     (embeddings, second_to_last, last, sum_last_four, concat_last_four, sum_all),
                     then a two-layer BiLSTM (config.task.head='bilstm') and the classifier;
                     learning rate 1e-3 (only the randomly initialised BiLSTM and classifier train;
                     the paper gives no rate for this mode, so this is our choice)
Each sets plain config fields, so the same runs are reachable with --config.task.head=bilstm,
--config.task.features=MODE --config.task.head=bilstm --config.optimizer.frozen_params='^bert/'.
A word's label sits on its first sub-token; the rest are ignored in the loss. Scores:
entity-level precision/recall/F1 as conlleval counts them (main metric f1), plus per-type F1 and
token accuracy. Recipe: max_seq_length 128, lr 5e-5, batch 32, 3 epochs, 10% warmup, dropout
0.1; cased models should set --config.lowercase=False (the paper used cased BERT for NER).
A BiLSTM run cannot be exported to Hugging Face / Google (no BertFor* class holds the BiLSTM).
"""

from bert_jax.modeling import FEATURE_MODES
from bert_jax.tasks import finetuning

PRESETS = {
    "": ("", "", ""),
    "conll2003": ("", "", "conll2003"),
    "wnut16": ("$BERT_JAX_DATA/ner/wnut16/train.conll", "$BERT_JAX_DATA/ner/wnut16/dev.conll", ""),
}


FEATURE_LEARNING_RATE = 1e-3

# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("", "conll2003", "wnut16", "wnut16,head=bilstm", "conll2003,head=bilstm",
                   *(f"wnut16,features={mode}" for mode in FEATURE_MODES), "conll2003,features=concat_last_four")


def _options(arg: str) -> tuple[str, dict[str, str]]:
    preset, *options = arg.split(",")
    if preset not in PRESETS:
        raise ValueError(f"experiments/finetune_ner.py: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    parsed = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("head", "features"):
            raise ValueError(f"experiments/finetune_ner.py:{arg}: unknown option {option!r}; expected head=bilstm "
                             f"or features=MODE (MODE one of {FEATURE_MODES})")
        parsed[key] = value
    if parsed.get("head", "bilstm") != "bilstm":
        raise ValueError(f"experiments/finetune_ner.py:{arg}: head={parsed['head']!r}; the option takes head=bilstm "
                         "(the linear head is the default)")
    if "features" in parsed and parsed["features"] not in FEATURE_MODES:
        raise ValueError(f"experiments/finetune_ner.py:{arg}: features={parsed['features']!r}; expected one of "
                         f"{FEATURE_MODES}")
    return preset, parsed


def get_config(arg: str = ""):
    preset, options = _options(arg)
    config = finetuning.base_config("ner", max_seq_length=128, learning_rate=5e-5)
    config.train_file, config.eval_file, tfds_name = PRESETS[preset]
    config.task.tfds_name = tfds_name  # "conll2003" reads TFDS instead of the files
    config.task.tfds_eval_split = "dev"
    config.task.tfds_data_dir = ""
    finetuning.add_head_fields(config, features=True)
    if options:
        config.task.head = "bilstm"
    if "features" in options:
        config.task.features = options["features"]
        config.optimizer.frozen_params = "^bert/"
        config.optimizer.learning_rate = FEATURE_LEARNING_RATE
    return config
