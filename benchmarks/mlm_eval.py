"""Masked-LM and NSP loss / accuracy of pretrained checkpoints on a set of pretraining instances.

    python benchmarks/mlm_eval.py --instances 'DIR/*.array_record' [--limit 1024] CKPT [CKPT ...]

The instances are Google-format ArrayRecord or TFRecord files (`python -m data_pipelines.create_pretraining_data`).
Run it on held-out text, or on the training text with a new masking seed, to see how much of a
falling training loss is memorisation. Every row also has the collapse statistics
(`hidden_cosine`, `hidden_effective_rank`: bert_jax.representation); a checkpoint without
pretraining heads (an encoder alone) gets only those. The figures are the trainer's own evaluation: its
prediction loop (`bert_jax.predict.Predictor`, token ids checked per batch) running
`bert_jax.tasks.pretraining.PretrainingTask`'s predict and evaluate over the first `--limit`
instances; one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/mlm_eval.py` from a clone
    sys.path.insert(0, str(REPO))

from bert_jax import load_pretrained  # noqa: E402
from bert_jax.predict import pretrained_predictor  # noqa: E402
from bert_jax.tasks.pretraining import PretrainingTask  # noqa: E402
from data_pipelines.record_files import read_pretraining_arrays  # noqa: E402


def instance_batches(instances: dict[str, np.ndarray], batch_size: int) -> list[dict[str, np.ndarray]]:
    """[n, ...] arrays -> batches of min(batch_size, n) rows in order; the last one padded with
    zero rows of example_weight 0 (the Task contract's eval batches)."""
    n = len(instances["input_ids"])
    rows = min(int(batch_size), n)
    batches = []
    for start in range(0, n, rows):
        batch = {k: v[start:start + rows] for k, v in instances.items()}
        real = len(batch["input_ids"])
        batch = {k: np.concatenate([v, np.zeros((rows - real, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}
        batch["example_weight"] = (np.arange(rows) < real).astype(np.float32)
        batches.append(batch)
    return batches


def evaluate(bert_config, params, instances: dict[str, np.ndarray], batch_size: int = 256,
             checkpoint: str = "the checkpoint", instances_name: str = "the instances",
             devices=None) -> dict[str, float]:
    """instances: read_pretraining_arrays output ([n, ...] arrays) -> mlm/nsp loss and accuracy.

    `devices` default to one device (data parallel over the given ones, which must divide the
    batch)."""
    if "cls" not in params:
        raise ValueError(f"checkpoint {checkpoint} has no pretraining heads (params 'cls/...'): "
                         "it is an encoder alone, so it has no MLM or NSP predictions to evaluate "
                         "(encoder_statistics gives its representation statistics)")
    task = PretrainingTask(ml_collections.ConfigDict({
        "data": {"next_sentence_prediction": True, "unmasked": False},
        "task": {"objective": "masked_lm", "synthetic_data": False},  # the instances' own masks
        "model": {"causal_attention": bert_config.causal_attention},
    }))
    predictor, params = pretrained_predictor(task, bert_config, params, f"checkpoint {checkpoint}",
                                             devices=devices or jax.local_devices()[:1])
    predictions, batches = predictor(params, instance_batches(instances, batch_size),
                                     f"{instances_name} (checkpoint {checkpoint})")
    return task.evaluate(predictions, batches)


def encoder_statistics(bert_config, params, instances: dict[str, np.ndarray], batch_size: int = 256) -> dict[str, float]:
    """hidden_cosine and hidden_effective_rank (bert_jax.representation) of any encoder, with or
    without pretraining heads, over the real tokens of `instances`: the collapse statistics of a
    checkpoint that has no MLM head to evaluate (a sentence encoder such as all-MiniLM-L6-v2)."""
    from bert_jax import representation
    from bert_jax.modeling.models import BertModel
    from bert_jax.tasks.pretraining import model_inputs

    model = BertModel(bert_config)
    encoder_params = params["bert"] if "bert" in params else params

    @jax.jit
    def rows(batch):
        out = model.apply({"params": encoder_params}, **model_inputs(batch), deterministic=True)
        return representation.hidden_state_rows(out["sequence_output"], batch["input_mask"])

    batches = instance_batches(instances, batch_size)
    outputs = [jax.tree.map(np.asarray, rows({k: v for k, v in b.items() if k != "example_weight"}))
               for b in batches]
    return representation.statistics(outputs, np.concatenate([b["example_weight"] for b in batches]))


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
        if "cls" in params:
            result = evaluate(bert_config, params, instances, args.batch_size, checkpoint=checkpoint,
                              instances_name=args.instances)
        else:  # an encoder alone: only its representation statistics
            result = encoder_statistics(bert_config, params, instances, args.batch_size)
        row = {"checkpoint": checkpoint, "instances": args.instances, "examples": len(instances["input_ids"])}
        print(json.dumps({**row, **{k: round(v, 4) for k, v in result.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
