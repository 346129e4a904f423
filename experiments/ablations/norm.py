"""Post-LN (BERT) vs pre-LN Transformer layers (Xiong et al. 2020).

    python -m bert_jax.sweep experiments/ablations/norm.py --workdir workdirs/ablation_norm
"""

from experiments.ablations import common


def get_sweep():
    return common.sweep({
        "post_ln": {"model.pre_layer_norm": False},
        "pre_ln": {"model.pre_layer_norm": True},
    })
