"""BERT's Table 7: fine-tuning vs feature-based use on NER (Devlin et al. 2019, section 5.3).

    python -m bert_jax.sweep experiments/ablations/paper_table7.py --workdir DIR
    python -m bert_jax.sweep experiments/ablations/paper_table7.py:paper --workdir DIR

One pretrained model (MLM + NSP; every row shares its pretraining run) is either fine-tuned, or
used ELMo-style: the encoder frozen (no gradient, no optimizer state), the hidden states of
chosen layers combined, then a two-layer BiLSTM and the classifier (`task.features`). Weighted
sums are learned softmax-normalised scalar mixes. The paper scores CoNLL-2003 (dev F1, BERT-base);
the CPU budget scores WNUT-16 with the 4-layer CPU model, whose "all layers" are its embeddings
and 4 layers.
"""

from experiments.ablations import common

DOCUMENTED_ARGS = ("cpu", "paper")
FEATURES = {
    "features_embeddings": "embeddings",
    "features_second_to_last": "second_to_last",
    "features_last": "last",
    "features_sum_last_four": "sum_last_four",
    "features_concat_last_four": "concat_last_four",
    "features_sum_all": "sum_all",
}

PAPER_TABLE = {
    "title": "Table 7: CoNLL-2003 NER, fine-tuning vs feature-based (BERT-base)",
    "columns": ["NER"],
    "rows": {
        "fine_tuning": ["Fine-tuning approach (BERT-BASE)", 96.4],
        "features_embeddings": ["Feature-based: Embeddings", 91.0],
        "features_second_to_last": ["Second-to-Last Hidden", 95.6],
        "features_last": ["Last Hidden", 94.9],
        "features_sum_last_four": ["Weighted Sum Last Four Hidden", 95.9],
        "features_concat_last_four": ["Concat Last Four Hidden", 96.1],
        "features_sum_all": ["Weighted Sum All 12 Layers", 95.5],
    },
}


def get_sweep(budget: str = "cpu"):
    common.check_budget(budget, __file__)
    variants = {"fine_tuning": {"pretrain": {}, "finetune": {}}}
    for name, features in FEATURES.items():
        variants[name] = {"pretrain": {}, "finetune": common.feature_based(features, budget)}
    sweep = common.paper_sweep(budget, variants=variants, evaluations=("ner",), paper=PAPER_TABLE)
    sweep["paper"]["title"] += " (dev F1)"
    return sweep
