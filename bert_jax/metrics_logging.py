"""Where metrics go: `metrics.jsonl`, TensorBoard event files, and a progress bar on a terminal.

Only process 0 writes (`MetricsWriter(..., enabled=jax.process_index() == 0)`).
Each line of metrics.jsonl is one JSON object: {"step": int, "split": "train"|"eval", name: value}.

A run that resumes from the checkpoint of step k repeats the steps after k, so
`MetricsWriter(..., resume_step=k)` first cuts every row after step k out of metrics.jsonl and
every event after step k out of the TensorBoard files (a fresh run passes 0): after any number
of stops, each step has one row.

A workdir given as a URL (gs://...) is written through etils.epath, like every other record of
the run, never through TensorFlow's own GCS filesystem: that one has no endpoint setting (its
https://www.googleapis.com URLs are compiled in), so it can reach neither an emulator nor a
bucket behind a private endpoint, and GCS objects cannot be appended to. The writer keeps
metrics.jsonl and the TensorBoard event files (TF's writer, to a local directory) in a local
staging directory and uploads each changed file whole: at most every `upload_every_s` seconds,
at `flush()` (the trainer flushes before every checkpoint, so the rows of the steps a checkpoint
covers are in the bucket before it is) and at `close()`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Mapping

from etils import epath

from bert_jax.run_files import METRICS_FILE, TENSORBOARD_DIR
# Sorts before the writers' own files (events.out.tfevents.<unix time>...), so readers see the
# kept steps first and the resumed run's after them.
KEPT_EVENTS_FILE = "events.out.tfevents.0000000000.kept.v2"


def truncate_jsonl(path: epath.Path, last_step: int) -> int:
    """Keeps the rows of steps <= last_step (and drops a torn last line); returns rows dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a hard kill
            dropped += 1
            continue
        if int(row.get("step", 0)) <= last_step:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)
    return dropped


def truncate_event_files(directory: epath.Path, last_step: int) -> int:
    """Rewrites a TensorBoard run directory's event files as one file holding only the events of
    steps <= last_step (in their order); returns the events dropped. A record torn by a hard kill
    ends its file."""
    files = sorted(p for p in directory.iterdir() if "tfevents" in p.name and not p.name.endswith(".tmp"))
    if not files:
        return 0
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    kept, dropped = [], 0
    for path in files:
        dataset = tf.data.TFRecordDataset(str(path))
        iterator = iter(dataset)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except tf.errors.DataLossError:  # torn last record
                dropped += 1
                break
            event = event_pb2.Event.FromString(record.numpy())
            if event.HasField("summary") and event.step > last_step:
                dropped += 1
            elif event.HasField("summary") or not kept:
                kept.append(record.numpy())  # summaries, and the first file_version header
    if not dropped and len(files) == 1:
        return 0
    tmp = directory / (KEPT_EVENTS_FILE + ".tmp")
    with tf.io.TFRecordWriter(str(tmp)) as out:
        for record in kept:
            out.write(record)
    for path in files:
        path.unlink()
    tmp.replace(directory / KEPT_EVENTS_FILE)
    return dropped


def _plain(value):
    value = float(value)
    return value if math.isfinite(value) else str(value)  # JSON has no NaN/inf


def is_url(path: str | os.PathLike) -> bool:
    """gs://, s3://, ...: a path that only etils.epath (not the local file APIs) can write."""
    return "://" in os.fspath(path)


class MetricsWriter:
    UPLOAD_EVERY_S = 5.0  # a URL workdir: the shortest time between two uploads of the same file

    def __init__(self, workdir: str | epath.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None, upload_every_s: float | None = None):
        self.enabled = enabled
        self.workdir = epath.Path(workdir)  # local or gs:// (etils.epath)
        self._tb_writers = {}
        self._tensorboard = tensorboard and enabled
        self._remote = enabled and is_url(workdir)
        self._upload_every_s = self.UPLOAD_EVERY_S if upload_every_s is None else float(upload_every_s)
        self._synced: dict[str, tuple[int, int]] = {}  # staged file -> (size, mtime_ns) last uploaded
        self._last_sync = time.monotonic()
        if enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            # Where the files are written: the workdir itself, or a local mirror of a URL workdir.
            self._local = epath.Path(tempfile.mkdtemp(prefix="bert_jax_metrics_")) if self._remote else self.workdir
            if self._remote:
                self._download()
            if resume_step is not None:
                truncate_jsonl(self._local / METRICS_FILE, resume_step)
                tensorboard_dir = self._local / TENSORBOARD_DIR
                if tensorboard_dir.is_dir():  # also when TensorBoard is off now but was on before
                    for split_dir in sorted(p for p in tensorboard_dir.iterdir() if p.is_dir()):
                        truncate_event_files(split_dir, resume_step)
            if self._remote:
                self._sync(prune=True)  # the cut files replace the bucket's before step 1
            self._jsonl = (self._local / METRICS_FILE).open("a")

    # ---- a URL workdir: the staged files and the bucket
    def _staged_files(self) -> list[str]:
        """Paths relative to the staging directory: metrics.jsonl and tensorboard/<split>/<file>."""
        names = [METRICS_FILE] if (self._local / METRICS_FILE).exists() else []
        tensorboard_dir = self._local / TENSORBOARD_DIR
        if tensorboard_dir.is_dir():
            names += sorted(f"{TENSORBOARD_DIR}/{d.name}/{f.name}" for d in tensorboard_dir.iterdir() if d.is_dir()
                            for f in d.iterdir() if "tfevents" in f.name and not f.name.endswith(".tmp"))
        return names

    def _stat(self, name: str) -> tuple[int, int]:
        st = os.stat(self._local / name)
        return st.st_size, st.st_mtime_ns

    def _download(self) -> None:
        remote = [self.workdir / METRICS_FILE] if (self.workdir / METRICS_FILE).exists() else []
        tensorboard_dir = self.workdir / TENSORBOARD_DIR
        if tensorboard_dir.is_dir():
            remote += [f for d in tensorboard_dir.iterdir() if d.is_dir() for f in d.iterdir()
                       if "tfevents" in f.name and not f.name.endswith(".tmp")]
        for path in remote:
            name = os.path.relpath(os.fspath(path), os.fspath(self.workdir))
            (self._local / name).parent.mkdir(parents=True, exist_ok=True)
            (self._local / name).write_bytes(path.read_bytes())
            self._synced[name] = self._stat(name)

    def _sync(self, prune: bool = False) -> None:
        """Uploads every staged file changed since its last upload (each GCS object is replaced
        whole, atomically); `prune` deletes the bucket's event files that the staging directory
        no longer has (merged into one by a resume's cut)."""
        staged = self._staged_files()
        for name in staged:
            stat = self._stat(name)
            if self._synced.get(name) != stat:
                (self.workdir / name).write_bytes((self._local / name).read_bytes())
                self._synced[name] = stat
        if prune:
            for name in set(self._synced) - set(staged):
                (self.workdir / name).unlink(missing_ok=True)
                del self._synced[name]
        self._last_sync = time.monotonic()

    def flush(self) -> None:
        """Everything written so far reaches the workdir (for a URL workdir: uploaded now)."""
        if not self.enabled:
            return
        self._jsonl.flush()
        for writer in self._tb_writers.values():
            writer.flush()
        if self._remote:
            self._sync()

    def _maybe_sync(self) -> None:
        if self._remote and time.monotonic() - self._last_sync >= self._upload_every_s:
            self._sync()

    def _tb(self, split: str):
        if split not in self._tb_writers:
            import tensorflow as tf  # only when TensorBoard output is on: it is slow to import
            tf.config.set_visible_devices([], "GPU")  # keep TF off the accelerators JAX uses
            self._tb_writers[split] = tf.summary.create_file_writer(str(self._local / TENSORBOARD_DIR / split))
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
        self._maybe_sync()

    def write_text(self, step: int, split: str, tag: str, text: str) -> None:
        """A text summary (TensorBoard's Text tab renders it as Markdown), e.g. the run's config."""
        if not (self.enabled and self._tensorboard):
            return
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2
        # What tensorboard's tf.summary.text writes: a string tensor under the "text" plugin.
        text_metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        with self._tb(split).as_default():
            tf.summary.write(tag, tf.constant(text), step=int(step), metadata=text_metadata)
            self._tb(split).flush()
        self._maybe_sync()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            for writer in self._tb_writers.values():
                writer.close()
            if self._remote:
                self._sync()
                shutil.rmtree(self._local, ignore_errors=True)


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


def eval_progress(batches, enabled: bool = True):
    """`batches` with a tqdm bar over the evaluation (batches done, rate), only on a terminal and
    only when there is something to evaluate (no empty "eval: 0batch" bar)."""
    if not (enabled and sys.stdout.isatty()) or (hasattr(batches, "__len__") and len(batches) == 0):
        return batches
    from tqdm import tqdm
    return tqdm(batches, desc="eval", unit="batch", leave=False, dynamic_ncols=True)
