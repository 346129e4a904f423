"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and a progress bar on a terminal.

Only process 0 writes (`MetricsWriter(..., enabled=jax.process_index() == 0)`).
Each line of metrics.jsonl is one JSON object: {"step": int, "split": "train"|"eval", name: value}.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
from typing import Mapping

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


class MetricsWriter:
    def __init__(self, workdir: str | pathlib.Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = pathlib.Path(workdir)
        self._tb_writers = {}
        self._tensorboard = tensorboard and enabled
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")

    def _tb(self, split: str):
        if split not in self._tb_writers:
            import tensorflow as tf  # only when TensorBoard output is on: it is slow to import
            tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
            self._tb_writers[split] = tf.summary.create_file_writer(str(self.workdir / "tensorboard" / split))
        return self._tb_writers[split]

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard:
            import tensorflow as tf
            from tensorflow.core.framework import summary_pb2
            # What tensorboard's tf.summary.scalar writes, with TF's own op: tensorflow-cpu does
            # not ship the tensorboard package that tf.summary.scalar needs.
            scalar_metadata = summary_pb2.SummaryMetadata(
                plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
            with self._tb(split).as_default():
                for name, value in metrics.items():
                    tf.summary.write(name, tf.constant(float(value), tf.float32), step=int(step),
                                     metadata=scalar_metadata)
                self._tb(split).flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            for writer in self._tb_writers.values():
                writer.close()


class ProgressBar:
    """A tqdm bar with ETA, only when stdout is a terminal (no bar in log files)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = None
        if enabled and sys.stdout.isatty():
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    @property
    def active(self) -> bool:
        return self._bar is not None

    def update(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
