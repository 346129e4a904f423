"""Model size: Google's tiny (2/128), mini (4/256) and small (4/512) BERTs, same data and steps.

    python -m bert_jax.sweep experiments/ablations/model_size.py --workdir workdirs/ablation_size
"""

from bert_jax.config import BertConfig
from experiments.ablations import common


def _architecture(preset: str) -> dict:
    config = BertConfig.preset(preset)
    fields = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    return {f"model.{name}": getattr(config, name) for name in fields}


def get_sweep():
    return common.sweep({preset: _architecture(preset) for preset in ("tiny", "mini", "small")})
