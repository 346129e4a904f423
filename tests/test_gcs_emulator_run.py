"""A run whose workdir is gs://bucket/..., against a real GCS JSON API (fake-gcs-server, started on a
free port on 127.0.0.1 by the `gcs` fixture and stopped after this module): orbax's async
checkpoints through TensorStore's GCS driver, the run's records and TensorBoard files through
etils.epath (gcsfs), a SIGKILL between checkpoints and a rerun that ends bitwise equal to a
straight local run, `convert` and `load_pretrained` reading the run from the bucket, and a
fine-tuning run (init_from the gs:// run) writing its predictions there. Every subprocess runs in
an empty directory that must stay empty: a path that silently fell back to local disk would
show there, and its objects would be missing from the emulator's listing."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.gcs_emulator import GcsEmulator
from tests.train_helpers import CLI_OVERRIDES, REPO, SUBPROCESS_TIMEOUT_S, losses_by_step, run_main, subprocess_env

STEPS, EVERY = 24, 6
COMMON = [f"--config.train.num_steps={STEPS}", f"--config.checkpoint.every_steps={EVERY}",
          "--config.checkpoint.async_save=True", "--config.logging.tensorboard=True"]


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    emulator = GcsEmulator(tmp_path_factory.mktemp("gcs")).start()
    yield emulator
    emulator.stop()


@pytest.fixture
def empty_cwd(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    yield cwd
    left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    assert not left, f"a gs:// run wrote to local disk instead of the bucket: {left[:20]}"


def _env(gcs):
    return subprocess_env(1, **gcs.env)


def _main(workdir, *overrides, config="pretrain.py:tiny,synthetic"):
    return [sys.executable, "-m", "bert_jax.main", f"--config={REPO}/experiments/{config}", f"--workdir={workdir}",
            *CLI_OVERRIDES, *overrides]


def _run(command, gcs, cwd):
    result = subprocess.run(command, cwd=cwd, env=_env(gcs), capture_output=True, text=True,
                            timeout=SUBPROCESS_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _python(code, gcs, cwd, *args):
    return _run([sys.executable, "-c", code, *map(str, args)], gcs, cwd)


def _jsonl(gcs, name):
    return [json.loads(line) for line in gcs.read(name).decode().splitlines() if line.strip()]


def _download(gcs, prefix, into):
    """The bucket's objects under `prefix` as local files (for tensorboard's own reader)."""
    for name in gcs.listing(prefix):
        target = into / name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gcs.read(name))
    return into


def test_metrics_and_tensorboard_reach_the_bucket_and_a_resume_cuts_them(gcs, empty_cwd, tmp_path):
    from tests.test_run_config import tensorboard_scalars

    code = (
        "from bert_jax.metrics_logging import MetricsWriter\n"
        "w = MetricsWriter('gs://bucket/mw', tensorboard=True, resume_step=0)\n"
        "for s in range(1, 6): w.write(s, 'train', {'loss': 10.0 - s})\n"
        "w.close()\n"
        "w = MetricsWriter('gs://bucket/mw', tensorboard=True, resume_step=3)\n"  # a resume from step 3
        "w.write(4, 'train', {'loss': 0.5})\n"
        "w.close()\n")
    _python(code, gcs, empty_cwd)
    assert [(r["step"], r["loss"]) for r in _jsonl(gcs, "mw/metrics.jsonl")] == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]
    events = [n for n in gcs.listing("mw/tensorboard/train/")]
    assert len(events) == 2 and "mw/tensorboard/train/events.out.tfevents.0000000000.kept.v2" in events, events
    local = _download(gcs, "mw/tensorboard/", tmp_path / "tb")
    assert tensorboard_scalars(local / "train", "loss") == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 0.5)]


def _kill_after(workdir, checkpoint, gcs, cwd):
    """Starts the run and SIGKILLs it once the bucket holds the committed checkpoint `checkpoint`
    and metrics.jsonl rows after it (uploaded every few seconds and before each save)."""
    process = subprocess.Popen(_main(workdir, *COMMON), cwd=cwd, env=_env(gcs), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    name = workdir[len("gs://bucket/"):] + "/metrics.jsonl"
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    try:
        while True:
            assert time.monotonic() < deadline, "the run did not reach the step in time"
            assert process.poll() is None, process.stderr.read()[-3000:]
            committed = workdir[len("gs://bucket/"):] + f"/checkpoints/{checkpoint}/commit_success.txt"
            if (committed in gcs.listing(committed) and name in gcs.listing(name)
                    and any(r["step"] > checkpoint for r in _jsonl(gcs, name))):
                break
            time.sleep(0.1)
        reached = max(r["step"] for r in _jsonl(gcs, name))
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        return reached
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=60)


@pytest.fixture(scope="module")
def killed_run(gcs, tmp_path_factory):
    """A straight run in a local workdir, and the same run in gs://bucket/killed, SIGKILLed after
    its first checkpoint and rerun to the end; both from an empty directory that stays empty."""
    root = tmp_path_factory.mktemp("gs_run")
    cwd = root / "cwd"
    cwd.mkdir()
    run_main(root / "straight", *COMMON)  # the reference
    workdir = "gs://bucket/killed"
    reached = _kill_after(workdir, EVERY, gcs, cwd)  # steps after the checkpoint are lost
    _run(_main(workdir, *COMMON), gcs, cwd)
    left = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*"))
    assert not left, f"a gs:// run wrote to local disk instead of the bucket: {left[:20]}"
    return workdir, root / "straight", reached


@pytest.mark.slow
def test_gs_workdir_killed_between_checkpoints_resumes_bitwise_and_is_read_back(gcs, killed_run, empty_cwd,
                                                                                tmp_path):
    from tests.test_run_config import tensorboard_scalars

    workdir, straight_dir, reached = killed_run
    straight = losses_by_step(straight_dir)

    # The records, read from the emulator: one row per step, the straight run's losses bit for bit.
    rows = [r for r in _jsonl(gcs, "killed/metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert {r["step"]: r["loss"] for r in rows} == straight
    starts = _jsonl(gcs, "killed/starts.jsonl")
    assert [s["restored_step"] for s in starts][0] is None and len(starts) == 2
    restored = starts[1]["restored_step"]
    assert restored is not None and restored % EVERY == 0 and EVERY <= restored < reached, (starts, reached)
    results = json.loads(gcs.read("killed/results.json"))
    assert results["step"] == STEPS and not results["preempted"]
    tb = _download(gcs, "killed/tensorboard/", tmp_path / "tb")
    scalars = tensorboard_scalars(tb / "train", "loss")
    assert [s for s, _ in scalars] == list(range(1, STEPS + 1))
    assert [v for _, v in scalars] == [np.float32(straight[s]) for s in range(1, STEPS + 1)]

    # The checkpoints are in the bucket, written by TensorStore (its media uploads) ...
    listing = gcs.listing("killed/checkpoints/")
    steps = sorted({int(name.split("/")[2]) for name in listing})
    assert steps[-1] == STEPS and all(s % EVERY == 0 for s in steps), steps
    assert any("/state/ocdbt.process_0/d/" in name for name in listing), sorted(listing)[:20]
    tensorstore_uploads = [line for line in gcs.requests()
                           if line.startswith("POST /upload/") and "uploadType=media" in line
                           and "killed%2Fcheckpoints%2F" in line]
    assert tensorstore_uploads, gcs.requests()[-20:]

    # ... and read back from it: restore_params and load_pretrained equal the straight run's params,
    # and convert writes a bert_jax checkpoint from the gs:// run.
    code = (
        "import sys, numpy as np\n"
        "from bert_jax import run_checkpoints\n"
        "from bert_jax.checkpoints import flatten, load_pretrained\n"
        "params, step = run_checkpoints.restore_params(sys.argv[1])\n"
        "assert step == int(sys.argv[3]), step\n"
        "np.savez(sys.argv[2] + '/restored.npz', **flatten(params))\n"
        "config, loaded = load_pretrained(sys.argv[1])\n"
        "np.savez(sys.argv[2] + '/loaded.npz', **flatten(loaded))\n"
        "from bert_jax import convert\n"
        "assert convert.main(['--input', sys.argv[1], '--output', sys.argv[2] + '/converted', '--to', 'bert_jax']) == 0\n")
    out = tmp_path / "out"
    out.mkdir()
    _python(code, gcs, empty_cwd, workdir, out, STEPS)
    from bert_jax import run_checkpoints
    from bert_jax.checkpoints import flatten, load_pretrained

    expected, _ = run_checkpoints.restore_params(straight_dir)
    expected = flatten(expected)
    restored = np.load(out / "restored.npz")
    assert sorted(restored.files) == sorted(expected)
    for name, value in expected.items():
        assert np.array_equal(restored[name], value), name
    _, local_loaded = load_pretrained(str(straight_dir))
    loaded, (_, converted) = np.load(out / "loaded.npz"), load_pretrained(str(out / "converted"))
    for name, value in flatten(local_loaded).items():
        assert np.array_equal(loaded[name], value), name
        assert np.array_equal(flatten(converted)[name], value), name


@pytest.mark.slow
def test_fine_tuning_from_a_gs_run_writes_its_predictions_to_the_bucket(gcs, killed_run, empty_cwd, tmp_path):
    """init_from=gs://... (load_pretrained through orbax) and the TSV task's predictions file
    through etils.epath, into a gs:// workdir."""
    pretrain = killed_run[0]
    vocab = tmp_path / "vocab.txt"
    words = [f"w{i}" for i in range(1024 - 5)]
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    rows = [(" ".join(words[i:i + 4]), "pos" if i % 2 else "neg") for i in range(40)]
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    command = [sys.executable, "-m", "bert_jax.main", f"--config={REPO}/experiments/finetune_tsv.py",
               "--workdir=gs://bucket/finetuned", f"--config.train_file={data}", f"--config.eval_file={data}",
               f"--config.init_from={pretrain}", f"--config.vocab_file={vocab}", "--config.max_seq_length=16",
               "--config.num_epochs=1", "--config.train.batch_size=16", "--config.train.eval_batch_size=16",
               "--config.logging.tensorboard=False", "--config.logging.progress_bar=False",
               "--config.logging.peak_flops_per_device=1e11"]
    _run(command, gcs, empty_cwd)
    predictions = gcs.read("finetuned/predictions").decode().splitlines()
    assert predictions[0] == "eval_set\tguid\tprediction\tlabel" and len(predictions) == 41
    assert {line.split("\t")[2] for line in predictions[1:]} <= {"neg", "pos"}
    assert json.loads(gcs.read("finetuned/results.json"))["init_from"] == pretrain
    assert any(n.startswith("finetuned/checkpoints/") for n in gcs.listing("finetuned/"))
