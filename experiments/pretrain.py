"""BERT pretraining (Devlin et al. 2019), paper hyperparameters.

    python -m bert_jax.main --config experiments/pretrain.py:base --workdir DIR
    python -m bert_jax.main --config experiments/pretrain.py:base,phase2 --workdir DIR2 --config.init_from=DIR

arg: a model preset (tiny, mini, small, medium, base, large), optionally followed by ",phase1"
(default: seq 128, 90% of the 1M steps) or ",phase2" (seq 512, the last 10%, warm-started from
phase 1 with `init_from`), and ",synthetic" (random-token batches: benchmarks, smoke tests).
Paper values: batch 256, Adam lr 1e-4 with 10k warmup steps and linear decay, weight decay 0.01,
dropout 0.1, 15% masking with at most 20 (seq 128) / 80 (seq 512) predictions, NSP on.

arg "cpu" is the recipe whose encoder beats random init on 2 CPU cores (issue 23; the evidence
and its full command, data preparation included, are in docs/pretraining_helps.md):

    python benchmarks/pretraining_helps.py --workdir DIR
"""

import ml_collections

from bert_jax.config import PRESETS
from bert_jax.tasks import pretraining

TOTAL_STEPS = 1_000_000
PHASES = {
    # phase: (seq_len, max_predictions_per_seq, steps, warmup)
    "phase1": (128, 20, 900_000, 10_000),
    "phase2": (512, 80, 100_000, 10_000),
}


# The arguments this file documents; tests/test_experiments.py validates each.
DOCUMENTED_ARGS = ("tiny", "mini", "small", "medium", "base", "large", "base,phase1", "base,phase2", "tiny,synthetic",
                   "cpu")

# The CPU recipe: a 4-layer BERT of width 128 (tiny's width, the paper tables' CPU depth) on
# 64-token rows of running text, RoBERTa-style: no NSP (it delays the end of the loss plateau,
# docs/quickstart_budget.md), dynamic masking (static masks were memorised there), pre-LN with
# no dropout and lr 3e-3 (recipe P: the post-LN, lr 1e-3 budget collapses,
# docs/representation_collapse.md). 5,000 steps of 64 rows: about 2.5 passes over the shared
# corpus with the tasks' training text, under an hour on 2 cores.
CPU_RECIPE = {
    "model.num_hidden_layers": 4,
    "model.pre_layer_norm": True,
    "model.hidden_dropout_prob": 0.0,
    "model.attention_probs_dropout_prob": 0.0,
    "data.max_seq_length": 64,
    "data.max_predictions_per_seq": 10,
    "data.next_sentence_prediction": False,
    "data.dynamic_masking": True,
    "optimizer.learning_rate": 3e-3,
    "optimizer.warmup_steps": 200,
    "optimizer.b2": 0.98,
    "train.batch_size": 64,
    "train.num_steps": 5000,
    "train.log_every": 100,
    "train.eval_every": 1000,
    "checkpoint.every_steps": 1000,
    "checkpoint.keep": 6,
}


def get_config(arg: str = "base") -> ml_collections.ConfigDict:
    if arg == "cpu":  # input_files, eval_input_files and vocab_file come from the command line
        config = get_config("tiny")
        for key, value in CPU_RECIPE.items():
            section, field = key.split(".")
            config[section][field] = value
        return config
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    preset, options = parts[0], set(parts[1:])
    if preset not in PRESETS:
        raise ValueError(f"experiments/pretrain.py: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    unknown = options - set(PHASES) - {"synthetic"}
    if unknown:
        raise ValueError(f"experiments/pretrain.py: unknown options {sorted(unknown)}; "
                         f"expected any of {sorted(PHASES)} and 'synthetic'")
    phases = options & set(PHASES)
    if len(phases) > 1:
        raise ValueError("experiments/pretrain.py: give at most one of phase1, phase2")
    seq_len, max_predictions, steps, warmup = PHASES[phases.pop() if phases else "phase1"]

    config = pretraining.base_config(preset, seq_len, max_predictions, synthetic="synthetic" in options)
    config.train.num_steps = steps
    config.optimizer.warmup_steps = warmup
    return config
