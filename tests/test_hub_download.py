"""Hub ids downloaded by huggingface_hub's real code from a local Hub (tests/hub_server.py, started
in this module on a free port, HF_ENDPOINT pointing at it): download and cache, then the same id
with HF_HUB_OFFLINE=1 and no request; an @revision pin (tag and commit sha); a missing repo,
revision or file as our CheckpointError; a download killed mid-file or cut by the server leaves
no partial file under a final name, and a partial file planted there (as another tool could
leave it) is caught by its hash, named offline and fetched again online. Each load runs in a
fresh process: huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE at import."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.hub_server import HubServer

MAIN, V1 = "b" * 40, "a" * 40  # main is the newer commit; tag v1 points at the older
REPO_ID = "org/tiny-bert"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hub_repos")
    for seed, commit in ((1, V1), (2, MAIN)):
        torch.manual_seed(seed)
        model = transformers.BertForPreTraining(transformers.BertConfig(
            vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=64))
        model.save_pretrained(root / REPO_ID / commit)
        (root / REPO_ID / commit / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (root / REPO_ID / "refs").mkdir()
    (root / REPO_ID / "refs" / "main").write_text(MAIN)
    (root / REPO_ID / "refs" / "v1").write_text(V1)
    # A repo without weights: config and vocab only.
    shutil.copytree(root / REPO_ID / MAIN, root / "org" / "no-weights" / MAIN,
                    ignore=shutil.ignore_patterns("*.safetensors"))
    (root / "org" / "no-weights" / "refs").mkdir()
    (root / "org" / "no-weights" / "refs" / "main").write_text(MAIN)
    server = HubServer(root).start()
    yield server
    server.stop()


def _env(hub, cache, offline=False):
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "JAX_PLATFORMS": "cpu",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_ETAG_TIMEOUT": "30",
           "HF_HUB_DOWNLOAD_TIMEOUT": "30"}
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


LOAD = (
    "import sys, numpy as np\n"
    "from bert_jax.checkpoints import flatten, load_pretrained\n"
    "config, params = load_pretrained(sys.argv[1])\n"
    "np.savez(sys.argv[2], **flatten(params))\n")


def _load(hub, cache, path, out, offline=False, **popen):
    return subprocess.run([sys.executable, "-c", LOAD, path, str(out)], env=_env(hub, cache, offline),
                          capture_output=True, text=True, timeout=TIMEOUT_S, **popen)


def _expected(hub, commit):
    from bert_jax.checkpoints import flatten, load_pretrained
    return flatten(load_pretrained(str(hub.root / REPO_ID / commit))[1])


def _assert_params(npz, expected):
    got = np.load(npz)
    assert sorted(got.files) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def _repo_cache(cache):
    return cache / ("models--" + REPO_ID.replace("/", "--"))


def test_downloads_caches_then_loads_offline_with_no_request(hub, tmp_path):
    cache = tmp_path / "cache"
    before = len(hub.log)
    result = _load(hub, cache, REPO_ID, tmp_path / "online.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    requests = hub.log[before:]
    assert f"GET /api/models/{REPO_ID}/revision/main" in requests
    assert f"GET /{REPO_ID}/resolve/{MAIN}/model.safetensors" in requests, requests
    expected = _expected(hub, MAIN)
    _assert_params(tmp_path / "online.npz", expected)
    snapshot = _repo_cache(cache) / "snapshots" / MAIN
    assert sorted(p.name for p in snapshot.iterdir()) == ["config.json", "model.safetensors", "vocab.txt"]
    assert (_repo_cache(cache) / "refs" / "main").read_text() == MAIN
    # Offline: the same id from the cache, and not one request to the Hub.
    before = len(hub.log)
    result = _load(hub, cache, REPO_ID, tmp_path / "offline.npz", offline=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hub.log[before:] == []
    _assert_params(tmp_path / "offline.npz", expected)


def test_a_revision_pin_is_honoured(hub, tmp_path):
    cache = tmp_path / "cache"
    for path in (f"{REPO_ID}@v1", f"{REPO_ID}@{V1}"):
        result = _load(hub, cache, path, tmp_path / "v1.npz")
        assert result.returncode == 0, result.stderr[-3000:]
        _assert_params(tmp_path / "v1.npz", _expected(hub, V1))
    assert [p.name for p in (_repo_cache(cache) / "snapshots").iterdir()] == [V1]  # main was never fetched
    assert not np.array_equal(*(_expected(hub, c)["bert/embeddings/word_embeddings/embedding"] for c in (V1, MAIN)))
    result = _load(hub, cache, f"{REPO_ID}@v1", tmp_path / "v1_offline.npz", offline=True)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_params(tmp_path / "v1_offline.npz", _expected(hub, V1))


@pytest.mark.parametrize("path, named", [
    ("org/absent", "RepositoryNotFoundError"),
    (f"{REPO_ID}@no-such-tag", "RevisionNotFoundError"),
    ("org/no-weights", "has no weights (model.safetensors or pytorch_model.bin)"),
])
def test_missing_repo_revision_or_file_is_our_named_error(hub, tmp_path, path, named):
    result = _load(hub, tmp_path / "cache", path, tmp_path / "x.npz")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("bert_jax.checkpoints.validation.CheckpointError: "), last
    assert repr(path.split("@")[0]) in last and named in last, last


def _no_partial_file_under_a_final_name(cache, expected_blobs):
    """Every blob in the cache is complete (hashes to its name) and every snapshot file resolves."""
    from bert_jax.checkpoints import hub as hub_lib
    blobs = _repo_cache(cache) / "blobs"
    for blob in blobs.iterdir() if blobs.is_dir() else []:
        if blob.name.endswith(".incomplete"):
            continue  # a temporary name: never read as the file
        assert blob.name in expected_blobs, f"{blob.name}: not a blob of this repo"
        assert hub_lib._blob_hash(blob.name, str(blob)) == blob.name, f"{blob}: partial under its final name"
    for snapshot in (_repo_cache(cache) / "snapshots").glob("*"):
        assert hub_lib.damaged_files(str(snapshot)) == []


def _blob_names(hub, commit):
    from tests.hub_server import HubServer as _  # noqa: F401  (the server's own ETags)
    snapshot = hub.root / REPO_ID / commit
    return {(e.get("lfs") or e)["oid"] for e in (hub._entry(p, p.name) for p in snapshot.iterdir())}


def test_a_download_killed_mid_file_leaves_no_partial_file_under_its_final_name(hub, tmp_path):
    cache = tmp_path / "cache"
    hub.throttle_s = 0.5  # 64 KiB per half second: the weights take seconds to arrive
    try:
        process = subprocess.Popen([sys.executable, "-c", LOAD, REPO_ID, str(tmp_path / "killed.npz")],
                                   env=_env(hub, cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + TIMEOUT_S
        blobs = _repo_cache(cache) / "blobs"
        # Killed once the weights' blob has a file (a temporary name, or under a broken downloader its
        # final one); huggingface_hub writes in 10 MB chunks, so it may still be empty then.
        weights = hub._entry(hub.root / REPO_ID / MAIN / "model.safetensors", "model.safetensors")["lfs"]["oid"]
        while not (blobs.is_dir() and any(p.name.startswith(weights) for p in blobs.iterdir())):
            assert process.poll() is None, process.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    finally:
        hub.throttle_s = 0.0
    _no_partial_file_under_a_final_name(cache, _blob_names(hub, MAIN))
    # Offline, the half download is not a checkpoint: our error, never a load of half the weights.
    result = _load(hub, cache, REPO_ID, tmp_path / "offline.npz", offline=True)
    assert result.returncode != 0 and "CheckpointError" in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    # Online again, the download completes.
    result = _load(hub, cache, REPO_ID, tmp_path / "resumed.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_params(tmp_path / "resumed.npz", _expected(hub, MAIN))
    _no_partial_file_under_a_final_name(cache, _blob_names(hub, MAIN))


def test_a_connection_dropped_mid_file_fails_and_leaves_no_partial_file(hub, tmp_path):
    cache = tmp_path / "cache"
    size = (hub.root / REPO_ID / MAIN / "model.safetensors").stat().st_size
    hub.cut_after["model.safetensors"] = size // 2
    try:
        result = _load(hub, cache, REPO_ID, tmp_path / "cut.npz")
    finally:
        hub.cut_after.clear()
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "CheckpointError" in last and repr(REPO_ID) in last, last
    _no_partial_file_under_a_final_name(cache, _blob_names(hub, MAIN))
    result = _load(hub, cache, REPO_ID, tmp_path / "again.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_params(tmp_path / "again.npz", _expected(hub, MAIN))


def test_a_partial_file_planted_under_its_final_name_is_named_offline_and_fetched_again_online(hub, tmp_path):
    cache = tmp_path / "cache"
    result = _load(hub, cache, REPO_ID, tmp_path / "first.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    weights = _repo_cache(cache) / "snapshots" / MAIN / "model.safetensors"
    blob = weights.resolve()
    data = blob.read_bytes()
    blob.write_bytes(data[: len(data) // 2])  # what a copy cut short, or another downloader, leaves
    result = _load(hub, cache, REPO_ID, tmp_path / "offline.npz", offline=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert "CheckpointError" in last and "model.safetensors" in last and "partial or damaged" in last, last
    before = len(hub.log)
    result = _load(hub, cache, REPO_ID, tmp_path / "online.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"GET /{REPO_ID}/resolve/{MAIN}/model.safetensors" in hub.log[before:]
    _assert_params(tmp_path / "online.npz", _expected(hub, MAIN))
    assert blob.read_bytes() == data


@pytest.mark.slow
def test_init_from_a_hub_id_fine_tunes_offline_from_the_downloaded_cache(hub, tmp_path):
    """The trainer's own path: a first process downloads the id into the cache, then
    `bert_jax.main --config.init_from=org/name` fine-tunes from it with HF_HUB_OFFLINE=1 (the
    vocabulary comes from the snapshot too) and sends the Hub no request."""
    cache = tmp_path / "cache"
    result = _load(hub, cache, REPO_ID, tmp_path / "download.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [(" ".join(VOCAB[5 + i:9 + i]), "pos" if i % 2 else "neg") for i in range(32)]
    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"{s}\t{label}\n" for s, label in rows))
    repo = pathlib.Path(__file__).resolve().parents[1]
    before = len(hub.log)
    run = subprocess.run(
        [sys.executable, "-m", "bert_jax.main", f"--config={repo}/experiments/finetune_tsv.py",
         f"--workdir={tmp_path / 'run'}", f"--config.train_file={data}", f"--config.eval_file={data}",
         f"--config.init_from={REPO_ID}", "--config.max_seq_length=16", "--config.num_epochs=1",
         "--config.train.batch_size=16", "--config.train.eval_batch_size=16", "--config.logging.tensorboard=False",
         "--config.logging.progress_bar=False", "--config.logging.peak_flops_per_device=1e11"],
        cwd=repo, env=_env(hub, cache, offline=True), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    assert hub.log[before:] == []
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["init_from"] == REPO_ID and results["step"] == 2  # ceil(32 / 16)
    assert results["config"]["model"]["hidden_size"] == 64  # the Hub model's, not a preset's
