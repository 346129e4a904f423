"""Baseline for `python -m bert_jax.benchmark`: Hugging Face transformers 4.57.6
FlaxBertForPreTraining + optax AdamW, the same pretraining step on the same kind of batch.

transformers v5 dropped Flax, so this runs in its own environment:

    python -m venv /tmp/venv_hf
    /tmp/venv_hf/bin/pip install transformers==4.57.6 jax==0.10.2 flax optax
    /tmp/venv_hf/bin/python benchmarks/hf_flax_baseline.py --model mini --seq-len 128 --batch-size 32 --steps 10

It prints one JSON line with the keys of bert_jax.benchmark. The step: forward with dropout,
MLM loss over the 20 masked positions (HF's head computes logits at every position, then they
are gathered), NSP loss, global-norm clipping 1.0, AdamW (b2 0.999, eps 1e-6, weight decay 0.01
off LayerNorm and biases), jitted with the state donated, timed after compilation with
block_until_ready. It does not import the bert_jax package (the model sizes are Google's
presets); it loads only bert_jax/flops.py by path (jax and numpy alone), so both benchmarks
divide by the same model-FLOPs count and the same peak.
"""

import argparse
import importlib.util
import json
import math
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from transformers import BertConfig, FlaxBertForPreTraining

_FLOPS_PY = pathlib.Path(__file__).resolve().parents[1] / "bert_jax" / "flops.py"


def _load_flops_module():
    spec = importlib.util.spec_from_file_location("bert_jax_flops", _FLOPS_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

# (layers, hidden, heads), as Google's released small BERTs and BERT base/large.
PRESETS = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8), "medium": (8, 512, 8),
           "base": (12, 768, 12), "large": (24, 1024, 16)}


def synthetic_batch(rng, batch, length, predictions, vocab):
    positions = np.sort(np.argsort(rng.random((batch, length - 1)), axis=1)[:, :predictions] + 1, axis=1)
    return {
        "input_ids": rng.integers(999, vocab, (batch, length), dtype=np.int32),
        "attention_mask": np.ones((batch, length), np.int32),
        "token_type_ids": (np.arange(length)[None, :] >= length // 2).astype(np.int32).repeat(batch, 0),
        "masked_lm_positions": positions.astype(np.int32),
        "masked_lm_ids": rng.integers(999, vocab, (batch, predictions), dtype=np.int32),
        "masked_lm_weights": np.ones((batch, predictions), np.float32),
        "next_sentence_labels": rng.integers(0, 2, (batch,), dtype=np.int32),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="mini", choices=sorted(PRESETS))
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-flops", type=float, default=0.0, help="0: a measured fp32 matmul peak")
    args = parser.parse_args()

    layers, hidden, heads = PRESETS[args.model]
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, hidden_act="gelu", max_position_embeddings=512)
    model = FlaxBertForPreTraining(config, seed=0, dtype=jnp.float32)
    predictions = {128: 20, 512: 80}.get(args.seq_len, math.ceil(0.15 * args.seq_len))

    def decay_mask(params):
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]
        keep = [not ("LayerNorm" in n or "bias" in n) for n in names]
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), keep)

    schedule = optax.linear_schedule(0.0, 1e-4, 10_000)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, mask=decay_mask))
    params = model.params
    opt_state = tx.init(params)

    def loss_fn(params, batch, dropout_rng):
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], params=params,
                    dropout_rng=dropout_rng, train=True)
        logits = jnp.take_along_axis(out.prediction_logits, batch["masked_lm_positions"][..., None], axis=1)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        nll = -jnp.take_along_axis(log_probs, batch["masked_lm_ids"][..., None], -1)[..., 0]
        w = batch["masked_lm_weights"]
        mlm = (nll * w).sum() / (w.sum() + 1e-5)
        nsp_lp = jax.nn.log_softmax(out.seq_relationship_logits.astype(jnp.float32), -1)
        nsp = -jnp.take_along_axis(nsp_lp, batch["next_sentence_labels"][:, None], -1).mean()
        return mlm + nsp

    def step(params, opt_state, batch, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(0)
    batches = [jax.device_put(synthetic_batch(rng, args.batch_size, args.seq_len, predictions, 30522))
               for _ in range(2)]
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, batches[i % 2], jax.random.PRNGKey(i))
        jax.block_until_ready((params, opt_state, loss))
        if i >= args.warmup:
            times.append(time.perf_counter() - start)

    # HF's BertConfig has the fields flops reads (hidden_size, intermediate_size, vocab_size,
    # num_hidden_layers): the same count as bert_jax.benchmark, the work needed rather than what
    # HF executes (its last layer and MLM decoder run at every position).
    flops = _load_flops_module()
    flops_per_token = flops.training_flops_per_token(config, args.seq_len, predictions, nsp=True)
    peak, source = flops.peak_flops_per_device(args.peak_flops)
    step_time = statistics.median(times)
    tokens_per_s = args.batch_size * args.seq_len / step_time
    print(json.dumps({
        "implementation": "transformers-4.57.6-FlaxBertForPreTraining", "model": args.model, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "steps": args.steps, "masked_predictions": predictions,
        "tokens_per_s": tokens_per_s, "step_time_s": step_time, "step_time_min_s": min(times),
        "model_flops_per_token": flops_per_token, "mfu": tokens_per_s * flops_per_token / peak,
        "peak_flops": peak, "peak_flops_source": source, "final_loss": float(loss),
    }))


if __name__ == "__main__":
    main()
