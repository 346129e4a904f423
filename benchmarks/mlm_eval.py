"""Masked-LM and NSP loss / accuracy of pretrained checkpoints on a set of pretraining instances.

    python benchmarks/mlm_eval.py --instances 'DIR/*.array_record' [--limit 1024] CKPT [CKPT ...]

The instances are Google-format ArrayRecord or TFRecord files (`python -m data_pipelines.create_pretraining_data`).
Run it on held-out text, or on the training text with a new masking seed, to see how much of a
falling training loss is memorisation. The losses are the trainer's own
(`bert_jax.tasks.pretraining`), over the first `--limit` instances; one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/mlm_eval.py` from a clone
    sys.path.insert(0, str(REPO))

from bert_jax import load_pretrained  # noqa: E402
from bert_jax.modeling.models import BertForPreTraining  # noqa: E402
from bert_jax.train import check_token_ids  # noqa: E402
from bert_jax.tasks.pretraining import losses_from_statistics, model_inputs, pretraining_statistics  # noqa: E402
from data_pipelines.tfrecord_io import read_pretraining_arrays  # noqa: E402


def evaluate(bert_config, params, instances: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, float]:
    """instances: read_pretraining_arrays output ([n, ...] arrays) -> mlm/nsp loss and accuracy."""
    model = BertForPreTraining(bert_config)

    @jax.jit
    def statistics(params, batch):  # params as an argument, not baked into the executable as constants
        outputs = model.apply({"params": params}, **model_inputs(batch), masked_positions=batch["masked_lm_positions"])
        return pretraining_statistics(outputs, batch, nsp=True)

    parts = []
    for start in range(0, len(instances["input_ids"]), batch_size):
        parts.append(jax.device_get(statistics(params, {k: v[start:start + batch_size] for k, v in instances.items()})))
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out = losses_from_statistics(stats, np.ones_like(stats["mlm_weight_sum"]), np)
    return {k: float(v) for k, v in out.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="anything bert_jax.load_pretrained reads")
    parser.add_argument("--instances", required=True, help="TFRecord file pattern of pretraining instances")
    parser.add_argument("--limit", type=int, default=1024, help="evaluate the first N instances")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    instances = read_pretraining_arrays(args.instances, limit=args.limit)
    for checkpoint in args.checkpoints:
        bert_config, params = load_pretrained(checkpoint, check_vocab=False)
        if "cls" not in params:
            raise ValueError(f"checkpoint {checkpoint} has no pretraining heads (params 'cls/...'): "
                             "it is an encoder alone, so it has no MLM or NSP predictions to evaluate")
        check_token_ids(instances, bert_config.vocab_size, f"{args.instances} (checkpoint {checkpoint})")
        result = evaluate(bert_config, params, instances, args.batch_size)
        row = {"checkpoint": checkpoint, "instances": args.instances, "examples": len(instances["input_ids"])}
        print(json.dumps({**row, **{k: round(v, 4) for k, v in result.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
