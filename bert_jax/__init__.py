"""bert_jax: BERT pretraining and fine-tuning in JAX/Flax.

    from bert_jax import BertConfig, load_pretrained, save_pretrained

Names are imported on first use, so `import bert_jax` stays cheap (no jax, torch or
tensorflow until a function that needs them runs).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "BertConfig": "bert_jax.config",
    "load_pretrained": "bert_jax.checkpoints",
    "save_pretrained": "bert_jax.checkpoints",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # for type checkers and IDEs; the runtime path is __getattr__
    from bert_jax.checkpoints import load_pretrained, save_pretrained
    from bert_jax.config import BertConfig


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bert_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
