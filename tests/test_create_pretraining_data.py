"""create_pretraining_data at corpus scale: partitions, two executors, resumable shards, bad input, gs://.

The commands run in subprocesses: their workers fork (local) or spawn (Beam), and forking the
pytest process with JAX threads running can deadlock. Statistics are measured on the Beam
output for ~30k instances of 1.4 MB of the shared corpus; tolerances are the issue's (each at
least 5 standard deviations of the measured quantity at this size).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_pipelines import pretraining_instances as pi
from data_pipelines import record_files, text_input
from data_pipelines.record_files import read_pretraining_arrays
from data_pipelines.tokenization import load_tokenizer
from tests.gcs_mock import in_memory_gcs

REPO = Path(__file__).resolve().parents[1]
UNCASED = "vocab/bert-base-uncased-vocab.txt"
FILES = ("corpus/lee_news.txt", "corpus/botchan.txt", "corpus/convention_speeches_2012.txt")  # 549 documents
TIMEOUT_S = 600
BEAM_OPTIONS = ["--", "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def run_cli(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "data_pipelines.create_pretraining_data", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
    if check and done.returncode:
        raise AssertionError(f"exit {done.returncode}\n{done.stderr[-4000:]}")
    return done


def shard_bytes(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("part-*"))}


@pytest.fixture(scope="module")
def tok(shared_data):
    return load_tokenizer(str(shared_data / UNCASED), lowercase=True)


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
    """The same flags on Beam (2 workers), the local executor with 2 workers and with 1."""
    root = tmp_path_factory.mktemp("cpd")
    common = ["--input_file", ",".join(str(shared_data / f) for f in FILES), "--vocab_file", shared_data / UNCASED,
              "--dupe_factor", "10", "--docs_per_partition", "200"]
    run_cli(*common, "--output_dir", root / "beam", "--engine", "beam", *BEAM_OPTIONS)
    run_cli(*common, "--output_dir", root / "local2", "--num_workers", "2")
    run_cli(*common, "--output_dir", root / "local1", "--num_workers", "1")
    return root


def test_engines_and_worker_counts_write_byte_identical_shards(runs):
    beam = shard_bytes(runs / "beam")
    assert len(beam) == 3 * 10  # ceil(549 / 200) = 3 partitions x 10 dupe passes
    assert shard_bytes(runs / "local2") == beam
    assert shard_bytes(runs / "local1") == beam
    metadata = json.loads((runs / "beam" / "metadata.json").read_text())
    assert metadata["counts"] == json.loads((runs / "local1" / "metadata.json").read_text())["counts"]
    assert metadata["counts"]["documents"] == 549 and metadata["files"] == sorted(beam)


def _partitions(shared_data, tok):
    """Each partition's corpus, rebuilt here from the documents and the partition rule."""
    sources = text_input.file_sources([str(shared_data / f) for f in FILES])
    documents = list(text_input.iter_documents(sources, "google", text_input.InputStats()))
    count = sum(s.count_documents() for s in sources)
    num = pi.num_partitions(count, 200)
    tokenized = pi.tokenize_documents(documents, tok)
    return [pi.partition_corpus(d for d in tokenized if pi.partition_of(d.key, num) == p) for p in range(num)]


@pytest.fixture(scope="module")
def beam_instances(runs, shared_data, tok):
    """The Beam shards read back, beside the recipe's own rows (and bookkeeping) per partition."""
    config = pi.InstanceConfig(dupe_factor=10)
    vocab, specials = tok.masking_vocab(), pi.special_ids_of(tok)
    expected, row_partition, partitions = [], [], _partitions(shared_data, tok)
    for p, corpus in enumerate(partitions):
        for d in range(10):
            for unit in pi.partition_instances(corpus, p, d, config, vocab, specials):
                expected.append(unit)
                row_partition += [p] * len(unit)
    files = read_pretraining_arrays(str(runs / "beam" / "*.array_record"))
    return files, pi.Instances.concatenate(expected), np.array(row_partition), partitions


def test_shards_hold_the_recipe_run_inside_each_partition(beam_instances):
    files, recipe, _, partitions = beam_instances
    assert len(partitions) == 3 and all(c.num_documents > 100 for c in partitions)
    for name, value in recipe.features().items():
        np.testing.assert_array_equal(files[name], value.reshape(files[name].shape), err_msg=name)


def test_random_next_sentences_come_from_the_same_partition(beam_instances, tok):
    """Segment B of a random-next row is text of the row's own partition (read from the files)."""
    files, recipe, row_partition, partitions = beam_instances
    texts = [c.token_ids.astype(np.int32).tobytes() for c in partitions]
    rng = np.random.default_rng(0)
    for p in range(3):
        rows = np.nonzero((row_partition == p) & (files["next_sentence_labels"][:, 0] == 1))[0]
        for r in rng.choice(rows, 60, replace=False):
            ids = _unmasked_row(files, r)
            b = ids[(files["segment_ids"][r] == 1) & (files["input_mask"][r] == 1)][:-1]  # B without its [SEP]
            assert _aligned_find(texts[p], b.astype(np.int32).tobytes()), (p, r)


def test_recipe_statistics_of_the_beam_output(beam_instances, tok):
    files, recipe, _, _ = beam_instances
    real = files["input_mask"].sum()
    predicted = files["masked_lm_weights"].sum()
    rows, cols = np.nonzero(files["masked_lm_weights"] > 0)
    shown = files["input_ids"][rows, files["masked_lm_positions"][rows, cols]]
    original = files["masked_lm_ids"][rows, cols]
    as_mask, kept = np.mean(shown == tok.mask_id), np.mean(shown == original)
    labels = files["next_sentence_labels"][:, 0]
    coin = ~recipe.forced_random_next
    lengths = files["input_mask"].sum(1)
    print(f"{len(labels)} instances: masked {predicted / real:.3%} of tokens; [MASK] {as_mask:.3%} kept {kept:.3%} "
          f"random {1 - as_mask - kept:.3%}; random next {labels[coin].mean():.3%} of {coin.sum()} multi-segment "
          f"chunks; rows of short-target documents {recipe.short_target.mean():.2%}")
    assert len(labels) > 25_000
    assert abs(predicted / real - 0.15) < 0.003
    assert abs(as_mask - 0.8) < 0.005 and abs(kept - 0.1) < 0.005 and abs(1 - as_mask - kept - 0.1) < 0.005
    assert abs(labels[coin].mean() - 0.5) < 0.02
    assert (labels[recipe.forced_random_next] == 1).all()
    # short_seq_prob = 0.1 per document, as test_pretraining_instances measures without partitions.
    assert 0.08 < recipe.short_target.mean() < 0.3
    assert lengths[recipe.short_target].mean() < 0.7 * lengths[~recipe.short_target].mean()


def _unmasked_row(files, r):
    ids = files["input_ids"][r].copy()
    w = files["masked_lm_weights"][r] > 0
    ids[files["masked_lm_positions"][r][w]] = files["masked_lm_ids"][r][w]
    return ids


def _aligned_find(haystack: bytes, needle: bytes) -> bool:
    at = haystack.find(needle)
    while at != -1 and at % 4:
        at = haystack.find(needle, at + 1)
    return at != -1


# ----------------------------------------------------------------------------- one partition = today
def _row_hashes(features) -> list:
    n = len(features["input_ids"])
    return sorted(hashlib.md5(b"".join(np.ascontiguousarray(features[k][i]).tobytes() for k in sorted(features))
                              ).hexdigest() for i in range(n))


def test_a_corpus_below_one_partition_gives_the_instances_of_the_unpartitioned_recipe(shared_data, tok, tmp_path):
    """Pinned against the code before partitions existed (commit 849f6bf, create_all_instances there)."""
    paths = [str(shared_data / "corpus/botchan.txt"), str(shared_data / "corpus/lee_news.txt")]
    corpus = pi.TokenizedCorpus.from_documents(list(text_input.read_google_documents(paths)), tok)
    pinned = {"nsp": (5480, "415e8073ef26e443c7b1249a555046df"),
              "full_sentences": (3973, "2b8a060ecf1284a578d26aa71362b6da")}
    for mode, (count, digest) in pinned.items():
        instances = pi.create_all_instances(corpus, tok, pi.InstanceConfig(dupe_factor=3, mode=mode))
        rows = _row_hashes(instances.features())
        assert (len(rows), hashlib.md5("".join(rows).encode()).hexdigest()) == (count, digest), mode
    # The command writes the same rows.
    run_cli("--input_file", ",".join(paths), "--vocab_file", shared_data / UNCASED, "--dupe_factor", "3",
            "--output_dir", tmp_path / "out", "--num_workers", "2")
    written = read_pretraining_arrays(str(tmp_path / "out" / "*.array_record"))
    written["next_sentence_labels"] = written["next_sentence_labels"].reshape(-1, 1)
    assert hashlib.md5("".join(_row_hashes(written)).encode()).hexdigest() == pinned["nsp"][1]


# ----------------------------------------------------------------------------- stops and reruns
def test_a_killed_run_resumes_from_its_finished_shards_and_other_flags_are_refused(shared_data, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((shared_data / "corpus/sotu.txt").read_bytes())
    common = ["--input_file", corpus, "--vocab_file", shared_data / UNCASED, "--dupe_factor", "6",
              "--docs_per_partition", "60", "--num_workers", "2", "--output_format", "tfrecord"]
    run_cli(*common, "--output_dir", tmp_path / "straight")
    straight = shard_bytes(tmp_path / "straight")
    assert len(straight) == 4 * 6

    out = tmp_path / "killed"
    for kill_after in (3, 11):  # killed twice, each time once that many shards are complete
        command = [sys.executable, "-m", "data_pipelines.create_pretraining_data", *map(str, common),
                   "--output_dir", str(out)]
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT_S
        while len(list(out.glob("part-*.tfrecord"))) < kill_after and process.poll() is None:
            assert time.monotonic() < deadline, "no shards appeared"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        # Every file under a final name is complete: it reads to the end, checksums verified.
        for path in out.glob("part-*.tfrecord"):
            assert straight[path.name] == hashlib.sha256(path.read_bytes()).hexdigest(), path.name
        assert not (out / "metadata.json").exists()
    run_cli(*common, "--output_dir", out)
    assert shard_bytes(out) == straight and not list(out.glob("*" + record_files.TEMP_SUFFIX))
    assert json.loads((out / "metadata.json").read_text())["counts"] == \
        json.loads((tmp_path / "straight" / "metadata.json").read_text())["counts"]

    refused = run_cli(*common, "--output_dir", out, "--masked_lm_prob", "0.2", check=False)
    assert refused.returncode != 0
    assert f"{out / 'recipe.json'} has config.masked_lm_prob=0.15, this run has 0.2" in refused.stderr
    assert shard_bytes(out) == straight


def test_bad_input_is_a_named_error_and_writes_nothing(shared_data, tmp_path):
    vocab = shared_data / UNCASED
    good = shared_data / "corpus/botchan.txt"
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    (tmp_path / "a_dir.txt").mkdir()
    no_specials = tmp_path / "vocab.txt"
    no_specials.write_text("\n".join(t for t in vocab.read_text().splitlines() if t != "[MASK]") + "\n")
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "part-00000-of-00001.array_record").write_bytes(b"")
    cases = [
        (["--input_file", tmp_path / "a_dir.txt", "--vocab_file", vocab], f"input file {tmp_path / 'a_dir.txt'} cannot be read"),
        (["--input_file", tmp_path / "empty.txt", "--vocab_file", vocab], "no text in the input file(s)"),
        (["--input_file", tmp_path / "nothing*.txt", "--vocab_file", vocab], "input_file: no file matches"),
        (["--input_file", good, "--vocab_file", no_specials], f"vocab '{no_specials}' lacks the special token(s) [MASK]"),
        (["--input_file", good, "--vocab_file", tmp_path / "missing.txt"], f"--vocab_file {tmp_path / 'missing.txt'} does not exist"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        done = run_cli(*args, "--output_dir", out, check=False)
        assert done.returncode != 0 and message in done.stderr, (message, done.stderr[-2000:])
        assert "Traceback" not in done.stderr or message in done.stderr.splitlines()[-1]
        assert not out.exists(), f"{message}: the output dir was created"
    done = run_cli("--input_file", good, "--vocab_file", vocab, "--output_dir", stray, check=False)
    assert "holds 1 shard(s) (part-00000-of-00001.array_record, ...) but no recipe.json" in done.stderr
    assert sorted(p.name for p in stray.iterdir()) == ["part-00000-of-00001.array_record"]


def test_damaged_text_is_counted_in_the_metadata(shared_data, tmp_path):
    text = (shared_data / "corpus/lee_news.txt").read_bytes()
    damaged = tmp_path / "damaged.txt"
    damaged.write_bytes(text[:2000] + b"\xff\xfe broken bytes here.\n" + b"word " * 5000 + b"\n\n" + text[2000:])
    run_cli("--input_file", damaged, "--vocab_file", shared_data / UNCASED, "--dupe_factor", "1",
            "--output_dir", tmp_path / "out", "--num_workers", "1")
    counted = json.loads((tmp_path / "out" / "metadata.json").read_text())["input"]
    assert counted["invalid_utf8_lines"] == 1 and counted["long_lines_split"] == 1


# ----------------------------------------------------------------------------- paths that are not local
@pytest.fixture
def gs_in_memory(monkeypatch):
    return in_memory_gcs(monkeypatch)


@pytest.mark.parametrize("output_format", ["array_record", "tfrecord"])
def test_gs_input_vocab_and_output_through_a_non_local_filesystem(shared_data, gs_in_memory, output_format):
    from data_pipelines import create_pretraining_data, files, input_pipeline

    for name in ("botchan.txt", "lee_news.txt"):
        files.copy(str(shared_data / "corpus" / name), f"gs://bucket/corpus/{name}")
    files.copy(str(shared_data / UNCASED), "gs://bucket/vocab.txt")
    out = f"gs://bucket/out_{output_format}"
    report = create_pretraining_data.main(["--input_file", "gs://bucket/corpus/*.txt", "--vocab_file", "gs://bucket/vocab.txt",
                                           "--output_dir", out, "--num_workers", "1", "--dupe_factor", "2",
                                           "--output_format", output_format])
    written = sorted(p for p in gs_in_memory.store if p.startswith(f"/bucket/out_{output_format}/"))
    extension = record_files.FORMATS[output_format]
    assert [os.path.basename(p) for p in written] == ["metadata.json", f"part-00000-of-00002{extension}",
                                                      f"part-00001-of-00002{extension}", "recipe.json"]
    config = input_pipeline.default_data_config()
    config.input_files = f"{out}/*{extension}"
    iterator = input_pipeline.make_pretraining_iterator(config, 16, seed=0)
    assert iterator.num_examples == report["instances"] > 3000
    batch = next(iterator)
    assert batch["input_ids"].shape == (16, 128)
    iterator.close()


# ----------------------------------------------------------------------------- the trainer on Beam shards
@pytest.mark.slow
def test_pretraining_on_beam_shards_learns_and_resumes_exactly(runs, tmp_path):
    """bert_jax.main reads the Beam-made ArrayRecord shards: the loss falls, and a run stopped at
    step 20 and resumed by the same command gives bitwise the losses of the straight run."""
    from tests.train_helpers import losses_by_step, subprocess_env

    def pretrain(workdir, *extra):
        done = subprocess.run(
            [sys.executable, "-m", "bert_jax.main", "--config=experiments/pretrain.py:tiny", f"--workdir={workdir}",
             f"--config.data.input_files={runs / 'beam' / '*.array_record'}", "--config.train.batch_size=16",
             "--config.train.num_steps=40", "--config.train.log_every=1", "--config.optimizer.warmup_steps=5",
             "--config.optimizer.learning_rate=2e-3", "--config.checkpoint.every_steps=20",
             "--config.checkpoint.async_save=False", "--config.logging.tensorboard=False",
             "--config.logging.progress_bar=False", *extra],
            cwd=REPO, env=subprocess_env(1), capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-4000:]

    pretrain(tmp_path / "straight")
    pretrain(tmp_path / "resumed", "--config.train.stop_at_step=20")
    pretrain(tmp_path / "resumed")
    straight, resumed = losses_by_step(tmp_path / "straight"), losses_by_step(tmp_path / "resumed")
    first, last = np.mean([straight[s] for s in range(1, 6)]), np.mean([straight[s] for s in range(36, 41)])
    print(f"loss: steps 1-5 {first:.3f}, steps 36-40 {last:.3f}")
    assert last < first - 1.0
    assert sorted(resumed) == list(range(1, 41))
    assert [resumed[s] for s in range(21, 41)] == [straight[s] for s in range(21, 41)]


def test_a_tfds_text_dataset_by_name(shared_data, tmp_path):
    """--input_format tfds through TFDS's own mock of a dataset (no download), on the local engine."""
    tf = pytest.importorskip("tensorflow")
    tfds = pytest.importorskip("tensorflow_datasets")
    from data_pipelines import create_pretraining_data

    articles = (shared_data / "corpus/enwiki_sample.txt").read_text(encoding="utf-8").split("\n\n")[:60]

    def as_dataset(*args, **kwargs):
        return tf.data.Dataset.from_tensor_slices({"text": [a.encode("utf-8") for a in articles],
                                                   "title": [b"t"] * len(articles)})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        report = create_pretraining_data.main(
            ["--input_format", "tfds", "--input_file", "wikipedia/20230601.en", "--vocab_file", str(shared_data / UNCASED),
             "--output_dir", str(tmp_path / "out"), "--num_workers", "1", "--dupe_factor", "2"])
    assert report["documents"] == sum(1 for a in articles if a.strip()) and report["instances"] > 100
    written = read_pretraining_arrays(str(tmp_path / "out" / "*.array_record"))
    assert len(written["input_ids"]) == report["instances"]
