"""What verified checkpoints cost: save and restore of BERT-base's full training state
(params + two Adam moments, ~1.3 GB in float32) through RunCheckpointer, with
checkpoint.verify on and off, and the crc32c pass alone.

    python -m benchmarks.checkpoint_verify --workdir /tmp/ckpt_bench [--repeats 3] [--preset base]

Prints one JSON line: median seconds of each, the ratio verify-on / verify-off for save and for
restore, the state's bytes, and the load average before the run (a loaded machine's timings
are not results). Saves are synchronous here (async_save=False) so the whole write is timed;
in training the async save returns earlier, while the checksum pass stays on the step's path.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time


def _state(preset: str):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bert_jax.config import BertConfig
    from bert_jax.modeling import BertForPreTraining

    config = BertConfig.preset(preset)
    shapes = jax.eval_shape(lambda: BertForPreTraining(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32)),
                          jax.tree.map(lambda x: getattr(x, "value", x), shapes["params"],
                                       is_leaf=lambda x: hasattr(x, "value")))
    return {"params": params, "mu": jax.tree.map(jnp.zeros_like, params), "nu": jax.tree.map(jnp.ones_like, params),
            "step": jnp.asarray(1000, jnp.int32)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="base")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from bert_jax import run_checkpoints
    from bert_jax.checkpoints import checksums

    load_before = os.getloadavg()
    state = _state(args.preset)
    nbytes = sum(int(np.asarray(x).nbytes) for x in jax.tree.leaves(state))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    times: dict[str, list[float]] = {k: [] for k in ("checksum_s", "save_on_s", "save_off_s", "restore_on_s",
                                                     "restore_off_s")}
    for repeat in range(args.repeats):
        start = time.perf_counter()
        checksums.tree_checksums(state)
        times["checksum_s"].append(time.perf_counter() - start)
        for verify in (False, True) if repeat % 2 == 0 else (True, False):  # alternate the order
            workdir = os.path.join(args.workdir, f"verify_{verify}")
            shutil.rmtree(workdir, ignore_errors=True)
            config = {"every_steps": 1, "keep": 1, "keep_best": False, "async_save": False, "verify": verify}
            checkpointer = run_checkpoints.RunCheckpointer(workdir, config)
            start = time.perf_counter()
            checkpointer.save(1, state, {}, {"step": 1}, force=True)
            checkpointer.wait_until_finished()
            times[f"save_{'on' if verify else 'off'}_s"].append(time.perf_counter() - start)
            checkpointer.close()
            checkpointer = run_checkpoints.RunCheckpointer(workdir, config)
            start = time.perf_counter()
            restored = checkpointer.restore(1, abstract)
            jax.block_until_ready(restored[0])
            times[f"restore_{'on' if verify else 'off'}_s"].append(time.perf_counter() - start)
            checkpointer.close()
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    report = {"preset": args.preset, "state_bytes": nbytes, "repeats": args.repeats, **medians,
              "save_ratio_on_off": round(medians["save_on_s"] / medians["save_off_s"], 3),
              "restore_ratio_on_off": round(medians["restore_on_s"] / medians["restore_off_s"], 3),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()],
              "devices": str(jax.devices()[0].platform)}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
