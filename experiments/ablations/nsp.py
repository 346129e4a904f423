"""Next-sentence prediction on vs off (Devlin et al. 2019, Table 5 "No NSP"; RoBERTa drops it).

    python -m bert_jax.sweep experiments/ablations/nsp.py --workdir workdirs/ablation_nsp

Both variants read the same instances (sentence pairs, half with a random second segment);
"no_nsp" only drops the NSP loss, so the comparison isolates the objective.
"""

from experiments.ablations import common


def get_sweep():
    return common.sweep({
        "nsp": {"data.next_sentence_prediction": True},
        "no_nsp": {"data.next_sentence_prediction": False},
    })
