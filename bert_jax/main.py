"""Train or fine-tune from an experiment file.

    python -m bert_jax.main --config experiments/pretrain.py:base --workdir DIR [--config.key=value ...]

The config is locked before the overrides apply, so an unknown or misspelled key is an error.
Re-running the same command in the same workdir resumes from its newest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment file: path/to/file.py:arg", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger("bert_jax").setLevel(logging.INFO)
    # orbax logs every file rename of every save at INFO through absl; keep its warnings only.
    absl_logging.set_verbosity(absl_logging.WARNING)
    config = _CONFIG.value
    from bert_jax import train  # after flag parsing: importing jax is slow
    train.maybe_initialize_distributed(config.distributed)
    results = train.train_and_evaluate(config, _WORKDIR.value)
    if results["preempted"]:
        logging.warning("stopped at step %d (SIGTERM or train.stop_at_step); checkpoint saved; "
                        "rerun the same command to continue", results["step"])
    return 0


def run() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app.run(main)


if __name__ == "__main__":
    run()
